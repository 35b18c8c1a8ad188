//! The storage contract as executable checks: what every backend must do, proven on a fresh database.
//!
//! Each check takes a freshly created, unmigrated database behind `&dyn Store`, so it says nothing
//! about any one engine; `tests/contract.rs` runs every check in [`CHECKS`] on SQLite and on
//! PostgreSQL, which is what keeps the two hand-written dialects from drifting apart
//! (CONVENTIONS.md, "Why these choices").
//!
//! Checks return a [`Failure`] instead of panicking, so the runner can finish every check, drop the
//! databases it created, and only then report; a panic would leave a PostgreSQL database behind.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::slice;

use portcullis_domain::{
    AuthMethods, BuiltinRole, CustomRole, DisplayName, InstanceId, InstanceMeta, MfaMethod, OneTimePurpose,
    OneTimeToken, Organization, OrganizationId, OrganizationSlug, Permission, RevokeReason, RoleId, RoleName,
    SecurityEvent, SecurityEventId, SecurityEventKind, Session, SessionId, SessionKind, Timestamp, TokenHash,
    UserId, UserStatus, error_chain,
};
use portcullis_store::{
    BlindIndex, KeyPurpose, KeyState, PiiRow, PiiTable, RefreshSpend, Sealed, SessionRecord, Store,
    StoreError, StoreTx, StoredKey, StoredOneTimeToken, StoredPersonKey, StoredSecurityEvent, StoredSession,
    StoredTotpDevice, StoredUser,
};

mod accounts_admin;
mod api_keys;
mod audit;
pub mod dump;
mod ip_rules;
mod login_throttle;
mod mfa;
mod roles;
mod scheduler;
mod security_events;

/// Why a check failed, in words that name the step and the engine's error chain.
#[derive(Debug)]
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// The result of one check.
pub type Outcome = Result<(), Failure>;

/// The future a check returns, boxed so that all checks fit in one table.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One named contract check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The check's function name, a sentence, as shown in a failure report.
    pub name: &'static str,
    /// Runs the check on a fresh, unmigrated database.
    pub run: for<'a> fn(&'a dyn Store) -> CheckFuture<'a>,
}

/// Every check that needs nothing but the store itself. A check added here runs on every backend
/// without further wiring; [`a_database_migrated_by_a_newer_binary_is_refused`] is separate because
/// it must write behind the store's back.
pub const CHECKS: &[Check] = &[
    Check {
        name: "a_dump_holds_every_table_in_the_fixed_order_with_rows_in_key_order",
        run: |s| Box::pin(dump::a_dump_holds_every_table_in_the_fixed_order_with_rows_in_key_order(s)),
    },
    Check {
        name: "a_load_refuses_a_database_with_data_unless_forced_and_then_reproduces_the_dump",
        run: |s| {
            Box::pin(dump::a_load_refuses_a_database_with_data_unless_forced_and_then_reproduces_the_dump(s))
        },
    },
    Check {
        name: "a_load_with_other_columns_is_refused_naming_the_table_and_column",
        run: |s| Box::pin(dump::a_load_with_other_columns_is_refused_naming_the_table_and_column(s)),
    },
    Check {
        name: "a_scheduled_run_is_claimed_once_per_task_and_slot",
        run: |s| Box::pin(scheduler::a_scheduled_run_is_claimed_once_per_task_and_slot(s)),
    },
    Check {
        name: "a_winning_claim_forgets_its_tasks_claims_past_their_keeping",
        run: |s| Box::pin(scheduler::a_winning_claim_forgets_its_tasks_claims_past_their_keeping(s)),
    },
    Check {
        name: "nodes_claiming_one_slot_at_once_have_exactly_one_winner",
        run: |s| Box::pin(scheduler::nodes_claiming_one_slot_at_once_have_exactly_one_winner(s)),
    },
    Check {
        name: "a_login_throttle_round_trips_is_replaced_whole_and_clears",
        run: |s| Box::pin(login_throttle::a_login_throttle_round_trips_is_replaced_whole_and_clears(s)),
    },
    Check {
        name: "login_addresses_are_remembered_per_account",
        run: |s| Box::pin(login_throttle::login_addresses_are_remembered_per_account(s)),
    },
    Check {
        name: "purging_forgets_idle_login_throttles_but_not_locked_ones",
        run: |s| Box::pin(login_throttle::purging_forgets_idle_login_throttles_but_not_locked_ones(s)),
    },
    Check {
        name: "users_are_listed_a_page_at_a_time_in_id_order_and_by_status",
        run: |s| Box::pin(users_are_listed_a_page_at_a_time_in_id_order_and_by_status(s)),
    },
    Check {
        name: "a_service_account_holds_its_organizations_custom_roles_and_is_listed_among_their_holders",
        run: |s| {
            Box::pin(
                api_keys::a_service_account_holds_its_organizations_custom_roles_and_is_listed_among_their_holders(s),
            )
        },
    },
    Check {
        name: "accounts_are_listed_in_creation_order_either_way_with_ties_broken_by_id",
        run: |s| {
            Box::pin(accounts_admin::accounts_are_listed_in_creation_order_either_way_with_ties_broken_by_id(
                s,
            ))
        },
    },
    Check {
        name: "editing_an_accounts_details_replaces_them_and_a_taken_address_is_a_conflict",
        run: |s| {
            Box::pin(
                accounts_admin::editing_an_accounts_details_replaces_them_and_a_taken_address_is_a_conflict(
                    s,
                ),
            )
        },
    },
    Check {
        name: "an_accounts_status_and_role_change_and_active_owners_are_counted",
        run: |s| Box::pin(an_accounts_status_and_role_change_and_active_owners_are_counted(s)),
    },
    Check {
        name: "a_person_key_is_made_once_only_for_a_live_account_and_erasure_takes_what_named_the_person",
        run: |s| {
            Box::pin(
                a_person_key_is_made_once_only_for_a_live_account_and_erasure_takes_what_named_the_person(s),
            )
        },
    },
    Check {
        name: "deleting_an_account_takes_its_credentials_and_leaves_its_sessions_revoked_and_erased",
        run: |s| {
            Box::pin(deleting_an_account_takes_its_credentials_and_leaves_its_sessions_revoked_and_erased(s))
        },
    },
    Check {
        name: "a_fresh_database_has_every_migration_pending",
        run: |s| Box::pin(a_fresh_database_has_every_migration_pending(s)),
    },
    Check {
        name: "migrate_applies_everything_and_is_idempotent",
        run: |s| Box::pin(migrate_applies_everything_and_is_idempotent(s)),
    },
    Check {
        name: "instance_is_absent_before_bootstrap",
        run: |s| Box::pin(instance_is_absent_before_bootstrap(s)),
    },
    Check { name: "instance_round_trips", run: |s| Box::pin(instance_round_trips(s)) },
    Check {
        name: "a_second_instance_row_is_a_conflict",
        run: |s| Box::pin(a_second_instance_row_is_a_conflict(s)),
    },
    Check {
        name: "a_transaction_in_which_a_statement_failed_refuses_to_commit",
        run: |s| Box::pin(a_transaction_in_which_a_statement_failed_refuses_to_commit(s)),
    },
    Check {
        name: "two_nodes_bootstrapping_at_once_agree_on_one_instance",
        run: |s| Box::pin(two_nodes_bootstrapping_at_once_agree_on_one_instance(s)),
    },
    Check {
        name: "a_transaction_sees_its_own_writes",
        run: |s| Box::pin(a_transaction_sees_its_own_writes(s)),
    },
    Check {
        name: "uncommitted_writes_are_invisible_to_other_transactions",
        run: |s| Box::pin(uncommitted_writes_are_invisible_to_other_transactions(s)),
    },
    Check {
        name: "an_uncommitted_transaction_leaves_nothing",
        run: |s| Box::pin(an_uncommitted_transaction_leaves_nothing(s)),
    },
    Check {
        name: "an_explicit_rollback_leaves_nothing",
        run: |s| Box::pin(an_explicit_rollback_leaves_nothing(s)),
    },
    Check {
        name: "a_read_transaction_sees_committed_data",
        run: |s| Box::pin(a_read_transaction_sees_committed_data(s)),
    },
    Check {
        name: "a_read_transaction_keeps_one_snapshot",
        run: |s| Box::pin(a_read_transaction_keeps_one_snapshot(s)),
    },
    Check {
        name: "a_read_transaction_refuses_writes",
        run: |s| Box::pin(a_read_transaction_refuses_writes(s)),
    },
    Check {
        name: "a_user_round_trips_and_is_found_by_its_email_index",
        run: |s| Box::pin(a_user_round_trips_and_is_found_by_its_email_index(s)),
    },
    Check {
        name: "a_second_account_with_the_same_email_index_is_a_conflict",
        run: |s| Box::pin(a_second_account_with_the_same_email_index_is_a_conflict(s)),
    },
    Check {
        name: "verifying_an_email_and_logging_in_are_recorded",
        run: |s| Box::pin(verifying_an_email_and_logging_in_are_recorded(s)),
    },
    Check {
        name: "a_password_hash_is_set_replaced_and_only_swapped_while_still_expected",
        run: |s| Box::pin(a_password_hash_is_set_replaced_and_only_swapped_while_still_expected(s)),
    },
    Check {
        name: "a_one_time_token_is_spent_once_for_its_purpose_before_it_expires",
        run: |s| Box::pin(a_one_time_token_is_spent_once_for_its_purpose_before_it_expires(s)),
    },
    Check {
        name: "voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose",
        run: |s| Box::pin(voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose(s)),
    },
    Check {
        name: "a_live_one_time_token_is_unused_unexpired_and_of_the_purpose",
        run: |s| Box::pin(a_live_one_time_token_is_unused_unexpired_and_of_the_purpose(s)),
    },
    Check {
        name: "two_first_owner_setups_at_once_create_one_account",
        run: |s| Box::pin(two_first_owner_setups_at_once_create_one_account(s)),
    },
    Check {
        name: "two_transactions_spending_one_one_time_token_at_once_get_it_once",
        run: |s| Box::pin(two_transactions_spending_one_one_time_token_at_once_get_it_once(s)),
    },
    Check {
        name: "a_session_round_trips_and_is_found_by_its_cookie",
        run: |s| Box::pin(a_session_round_trips_and_is_found_by_its_cookie(s)),
    },
    Check {
        name: "sessions_of_lists_live_sessions_newest_first",
        run: |s| Box::pin(sessions_of_lists_live_sessions_newest_first(s)),
    },
    Check {
        name: "the_session_history_holds_every_session_of_the_account_newest_first_with_why_it_ended",
        run: |s| {
            Box::pin(the_session_history_holds_every_session_of_the_account_newest_first_with_why_it_ended(s))
        },
    },
    Check {
        name: "retention_purges_only_what_ended_or_aged_before_the_cut_in_bounded_batches",
        run: |s| Box::pin(retention_purges_only_what_ended_or_aged_before_the_cut_in_bounded_batches(s)),
    },
    Check {
        name: "a_sessions_sealed_client_details_come_back_with_the_session_list",
        run: |s| Box::pin(a_sessions_sealed_client_details_come_back_with_the_session_list(s)),
    },
    Check {
        name: "revoking_another_accounts_session_is_refused_and_changes_nothing",
        run: |s| Box::pin(revoking_another_accounts_session_is_refused_and_changes_nothing(s)),
    },
    Check {
        name: "revoking_all_sessions_of_an_account_keeps_the_one_asked_for",
        run: |s| Box::pin(revoking_all_sessions_of_an_account_keeps_the_one_asked_for(s)),
    },
    Check {
        name: "touching_a_session_moves_last_seen_forward_and_never_back",
        run: |s| Box::pin(touching_a_session_moves_last_seen_forward_and_never_back(s)),
    },
    Check {
        name: "sessions_revoked_since_lists_revocations_from_that_instant",
        run: |s| Box::pin(sessions_revoked_since_lists_revocations_from_that_instant(s)),
    },
    Check {
        name: "revoking_sessions_seen_since_an_instant_ends_only_live_bearer_sessions_seen_from_then",
        run: |s| {
            Box::pin(revoking_sessions_seen_since_an_instant_ends_only_live_bearer_sessions_seen_from_then(s))
        },
    },
    Check {
        name: "a_refresh_token_is_spent_once_then_reported_as_already_spent",
        run: |s| Box::pin(a_refresh_token_is_spent_once_then_reported_as_already_spent(s)),
    },
    Check {
        name: "two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent",
        run: |s| Box::pin(two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent(s)),
    },
    Check {
        name: "keys_round_trip_oldest_first_with_every_field",
        run: |s| Box::pin(keys_round_trip_oldest_first_with_every_field(s)),
    },
    Check {
        name: "a_second_active_or_next_key_of_a_purpose_or_a_reused_id_is_a_conflict",
        run: |s| Box::pin(a_second_active_or_next_key_of_a_purpose_or_a_reused_id_is_a_conflict(s)),
    },
    Check {
        name: "a_key_moves_only_from_the_state_it_is_in_and_destroying_it_erases_its_secret",
        run: |s| Box::pin(a_key_moves_only_from_the_state_it_is_in_and_destroying_it_erases_its_secret(s)),
    },
    Check {
        name: "two_nodes_creating_the_first_active_key_of_a_purpose_at_once_agree_on_one",
        run: |s| Box::pin(two_nodes_creating_the_first_active_key_of_a_purpose_at_once_agree_on_one(s)),
    },
    Check {
        name: "two_nodes_rotating_one_purpose_at_once_rotate_it_once",
        run: |s| Box::pin(two_nodes_rotating_one_purpose_at_once_rotate_it_once(s)),
    },
    Check {
        name: "a_key_inserted_as_active_while_another_node_promotes_one_is_a_conflict",
        run: |s| Box::pin(a_key_inserted_as_active_while_another_node_promotes_one_is_a_conflict(s)),
    },
    Check {
        name: "rewrapping_a_key_replaces_its_kek_and_secret_but_not_those_of_a_destroyed_key",
        run: |s| Box::pin(rewrapping_a_key_replaces_its_kek_and_secret_but_not_those_of_a_destroyed_key(s)),
    },
    Check {
        name: "security_events_round_trip_newest_first_up_to_the_limit",
        run: |s| Box::pin(security_events_round_trip_newest_first_up_to_the_limit(s)),
    },
    Check {
        name: "security_events_are_listed_newest_first_a_page_at_a_time_without_repeats_or_gaps",
        run: |s| {
            Box::pin(
                security_events::security_events_are_listed_newest_first_a_page_at_a_time_without_repeats_or_gaps(s),
            )
        },
    },
    Check {
        name: "a_security_event_cursor_is_the_position_of_the_last_event_of_its_page",
        run: |s| {
            Box::pin(security_events::a_security_event_cursor_is_the_position_of_the_last_event_of_its_page(
                s,
            ))
        },
    },
    Check {
        name: "security_events_are_filtered_by_kinds_account_and_half_open_time_range",
        run: |s| {
            Box::pin(security_events::security_events_are_filtered_by_kinds_account_and_half_open_time_range(
                s,
            ))
        },
    },
    Check {
        name: "filtered_pages_continue_where_they_stopped_while_new_events_are_recorded",
        run: |s| {
            Box::pin(
                security_events::filtered_pages_continue_where_they_stopped_while_new_events_are_recorded(s),
            )
        },
    },
    Check {
        name: "a_listed_security_event_comes_back_whole_with_its_details",
        run: |s| Box::pin(security_events::a_listed_security_event_comes_back_whole_with_its_details(s)),
    },
    Check {
        name: "sealed_fields_of_every_table_round_trip_byte_for_byte",
        run: |s| Box::pin(sealed_fields_of_every_table_round_trip_byte_for_byte(s)),
    },
    Check {
        name: "rows_sealed_under_other_keys_are_found_in_every_table_up_to_the_limit",
        run: |s| Box::pin(rows_sealed_under_other_keys_are_found_in_every_table_up_to_the_limit(s)),
    },
    Check {
        name: "a_row_is_resealed_only_while_it_is_still_under_the_key_it_was_read_under",
        run: |s| Box::pin(a_row_is_resealed_only_while_it_is_still_under_the_key_it_was_read_under(s)),
    },
    Check {
        name: "rows_under_a_key_are_counted_over_all_four_tables",
        run: |s| Box::pin(rows_under_a_key_are_counted_over_all_four_tables(s)),
    },
    Check {
        name: "a_user_is_reindexed_only_from_the_key_it_was_indexed_with",
        run: |s| Box::pin(a_user_is_reindexed_only_from_the_key_it_was_indexed_with(s)),
    },
    Check {
        name: "reindexing_a_user_onto_another_accounts_index_is_a_conflict",
        run: |s| Box::pin(reindexing_a_user_onto_another_accounts_index_is_a_conflict(s)),
    },
    Check {
        name: "an_organization_round_trips_by_id_and_by_slug_and_a_taken_slug_is_a_conflict",
        run: |s| Box::pin(an_organization_round_trips_by_id_and_by_slug_and_a_taken_slug_is_a_conflict(s)),
    },
    Check {
        name: "organizations_are_listed_a_page_at_a_time_in_id_order",
        run: |s| Box::pin(organizations_are_listed_a_page_at_a_time_in_id_order(s)),
    },
    Check {
        name: "renaming_an_organization_changes_only_its_name_and_reports_a_missing_one",
        run: |s| Box::pin(renaming_an_organization_changes_only_its_name_and_reports_a_missing_one(s)),
    },
    Check {
        name: "deleting_an_organization_takes_its_memberships_and_reports_false_the_second_time",
        run: |s| {
            Box::pin(deleting_an_organization_takes_its_memberships_and_reports_false_the_second_time(s))
        },
    },
    Check {
        name: "a_membership_is_set_changed_listed_a_page_at_a_time_and_removed_once",
        run: |s| Box::pin(a_membership_is_set_changed_listed_a_page_at_a_time_and_removed_once(s)),
    },
    Check {
        name: "a_membership_in_a_missing_organization_or_of_a_missing_account_is_a_conflict",
        run: |s| Box::pin(a_membership_in_a_missing_organization_or_of_a_missing_account_is_a_conflict(s)),
    },
    Check {
        name: "only_active_accounts_holding_the_role_in_that_organization_are_counted",
        run: |s| Box::pin(only_active_accounts_holding_the_role_in_that_organization_are_counted(s)),
    },
    Check {
        name: "deleting_an_account_ends_its_memberships",
        run: |s| Box::pin(deleting_an_account_ends_its_memberships(s)),
    },
    Check {
        name: "a_role_round_trips_every_field_by_organization_and_id_and_is_none_elsewhere",
        run: |s| Box::pin(a_role_round_trips_every_field_by_organization_and_id_and_is_none_elsewhere(s)),
    },
    Check {
        name: "roles_are_listed_in_name_order_and_only_their_organizations",
        run: |s| Box::pin(roles_are_listed_in_name_order_and_only_their_organizations(s)),
    },
    Check {
        name: "a_taken_role_name_is_a_conflict_in_its_organization_but_free_in_another",
        run: |s| Box::pin(a_taken_role_name_is_a_conflict_in_its_organization_but_free_in_another(s)),
    },
    Check {
        name: "updating_a_role_changes_its_name_permissions_and_updated_at_and_reports_a_missing_one",
        run: |s| {
            Box::pin(updating_a_role_changes_its_name_permissions_and_updated_at_and_reports_a_missing_one(s))
        },
    },
    Check {
        name: "renaming_a_role_onto_a_taken_name_is_a_conflict",
        run: |s| Box::pin(renaming_a_role_onto_a_taken_name_is_a_conflict(s)),
    },
    Check {
        name: "member_roles_are_replaced_and_read_back_in_their_documented_orders",
        run: |s| Box::pin(member_roles_are_replaced_and_read_back_in_their_documented_orders(s)),
    },
    Check {
        name: "member_roles_for_a_non_member_or_from_another_organization_are_a_membership_conflict",
        run: |s| {
            Box::pin(member_roles_for_a_non_member_or_from_another_organization_are_a_membership_conflict(s))
        },
    },
    Check {
        name: "deleting_a_role_takes_its_holdings_and_reports_false_the_second_time",
        run: |s| Box::pin(deleting_a_role_takes_its_holdings_and_reports_false_the_second_time(s)),
    },
    Check {
        name: "changing_a_members_builtin_role_keeps_the_custom_roles_they_hold",
        run: |s| Box::pin(changing_a_members_builtin_role_keeps_the_custom_roles_they_hold(s)),
    },
    Check {
        name: "removing_a_membership_takes_the_roles_held_in_it",
        run: |s| Box::pin(removing_a_membership_takes_the_roles_held_in_it(s)),
    },
    Check {
        name: "deleting_an_organization_takes_its_roles_and_their_holdings",
        run: |s| Box::pin(deleting_an_organization_takes_its_roles_and_their_holdings(s)),
    },
    Check {
        name: "deleting_an_account_takes_the_roles_it_held",
        run: |s| Box::pin(deleting_an_account_takes_the_roles_it_held(s)),
    },
    Check {
        name: "a_service_account_round_trips_and_its_name_is_taken_only_within_its_organization",
        run: |s| {
            Box::pin(
                api_keys::a_service_account_round_trips_and_its_name_is_taken_only_within_its_organization(s),
            )
        },
    },
    Check {
        name: "service_accounts_are_listed_by_organization_a_page_at_a_time_in_id_order",
        run: |s| {
            Box::pin(api_keys::service_accounts_are_listed_by_organization_a_page_at_a_time_in_id_order(s))
        },
    },
    Check {
        name: "a_service_account_update_replaces_name_role_and_status_and_a_taken_name_is_a_conflict",
        run: |s| {
            Box::pin(api_keys::a_service_account_update_replaces_name_role_and_status_and_a_taken_name_is_a_conflict(s))
        },
    },
    Check {
        name: "deleting_a_service_account_takes_its_keys_and_reports_false_the_second_time",
        run: |s| {
            Box::pin(api_keys::deleting_a_service_account_takes_its_keys_and_reports_false_the_second_time(s))
        },
    },
    Check {
        name: "deleting_an_organization_takes_its_service_accounts_and_their_keys",
        run: |s| Box::pin(api_keys::deleting_an_organization_takes_its_service_accounts_and_their_keys(s)),
    },
    Check {
        name: "an_api_key_round_trips_every_field_whoever_owns_it",
        run: |s| Box::pin(api_keys::an_api_key_round_trips_every_field_whoever_owns_it(s)),
    },
    Check {
        name: "a_reused_api_key_id_or_a_missing_owner_is_a_conflict",
        run: |s| Box::pin(api_keys::a_reused_api_key_id_or_a_missing_owner_is_a_conflict(s)),
    },
    Check {
        name: "api_keys_of_lists_one_owners_keys_newest_first_and_only_live_ones_are_counted",
        run: |s| {
            Box::pin(api_keys::api_keys_of_lists_one_owners_keys_newest_first_and_only_live_ones_are_counted(
                s,
            ))
        },
    },
    Check {
        name: "rotating_an_api_key_keeps_the_old_digest_a_while_and_a_revoked_key_is_not_rotated",
        run: |s| {
            Box::pin(
                api_keys::rotating_an_api_key_keeps_the_old_digest_a_while_and_a_revoked_key_is_not_rotated(
                    s,
                ),
            )
        },
    },
    Check {
        name: "recording_an_api_key_use_only_moves_it_forward_and_keeps_the_sealed_ip_of_that_use",
        run: |s| {
            Box::pin(
                api_keys::recording_an_api_key_use_only_moves_it_forward_and_keeps_the_sealed_ip_of_that_use(
                    s,
                ),
            )
        },
    },
    Check {
        name: "an_api_keys_last_ip_is_found_resealed_and_counted",
        run: |s| Box::pin(api_keys::an_api_keys_last_ip_is_found_resealed_and_counted(s)),
    },
    Check {
        name: "deleting_an_account_takes_its_api_keys",
        run: |s| Box::pin(api_keys::deleting_an_account_takes_its_api_keys(s)),
    },
    Check {
        name: "a_role_round_trips_every_field_by_organization_and_id_and_is_none_for_another_organization",
        run: |s| {
            Box::pin(roles::a_role_round_trips_every_field_by_organization_and_id_and_is_none_for_another_organization(s))
        },
    },
    Check {
        name: "roles_are_listed_in_name_order_and_only_for_their_organization",
        run: |s| Box::pin(roles::roles_are_listed_in_name_order_and_only_for_their_organization(s)),
    },
    Check {
        name: "a_role_name_is_unique_per_organization_and_a_reused_id_or_a_missing_organization_conflicts",
        run: |s| {
            Box::pin(roles::a_role_name_is_unique_per_organization_and_a_reused_id_or_a_missing_organization_conflicts(s))
        },
    },
    Check {
        name: "updating_a_role_replaces_its_name_permissions_and_update_time_and_reports_a_missing_one",
        run: |s| {
            Box::pin(roles::updating_a_role_replaces_its_name_permissions_and_update_time_and_reports_a_missing_one(s))
        },
    },
    Check {
        name: "deleting_a_role_reports_true_then_false_and_takes_its_holdings",
        run: |s| Box::pin(roles::deleting_a_role_reports_true_then_false_and_takes_its_holdings(s)),
    },
    Check {
        name: "setting_member_roles_replaces_the_set_and_refuses_a_non_member_or_another_organizations_role",
        run: |s| {
            Box::pin(roles::setting_member_roles_replaces_the_set_and_refuses_a_non_member_or_another_organizations_role(s))
        },
    },
    Check {
        name: "held_roles_read_back_by_member_by_account_and_by_role_in_their_orders",
        run: |s| Box::pin(roles::held_roles_read_back_by_member_by_account_and_by_role_in_their_orders(s)),
    },
    Check {
        name: "removing_a_membership_takes_the_roles_held_through_it",
        run: |s| Box::pin(roles::removing_a_membership_takes_the_roles_held_through_it(s)),
    },
    Check {
        name: "deleting_an_organization_takes_its_roles_and_every_holding_of_them",
        run: |s| Box::pin(roles::deleting_an_organization_takes_its_roles_and_every_holding_of_them(s)),
    },
    Check {
        name: "deleting_an_account_takes_its_role_holdings",
        run: |s| Box::pin(roles::deleting_an_account_takes_its_role_holdings(s)),
    },
    Check {
        name: "an_ip_rule_round_trips_every_field_and_rules_are_listed_oldest_first",
        run: |s| Box::pin(ip_rules::an_ip_rule_round_trips_every_field_and_rules_are_listed_oldest_first(s)),
    },
    Check {
        name: "a_reused_ip_rule_id_conflicts_and_a_detection_rule_must_expire",
        run: |s| Box::pin(ip_rules::a_reused_ip_rule_id_conflicts_and_a_detection_rule_must_expire(s)),
    },
    Check {
        name: "deleting_an_ip_rule_reports_true_then_false",
        run: |s| Box::pin(ip_rules::deleting_an_ip_rule_reports_true_then_false(s)),
    },
    Check {
        name: "purging_takes_exactly_the_ip_rules_expired_at_or_before_now",
        run: |s| Box::pin(ip_rules::purging_takes_exactly_the_ip_rules_expired_at_or_before_now(s)),
    },
    Check { name: "ping_answers", run: |s| Box::pin(ping_answers(s)) },
    Check { name: "close_is_clean", run: |s| Box::pin(close_is_clean(s)) },
    Check {
        name: "audit_events_append_at_the_head_and_read_back_in_chain_order",
        run: |s| Box::pin(audit::audit_events_append_at_the_head_and_read_back_in_chain_order(s)),
    },
    Check {
        name: "an_append_from_a_stale_head_is_refused_and_writes_nothing",
        run: |s| Box::pin(audit::an_append_from_a_stale_head_is_refused_and_writes_nothing(s)),
    },
    Check {
        name: "two_transactions_appending_at_once_form_one_chain",
        run: |s| Box::pin(audit::two_transactions_appending_at_once_form_one_chain(s)),
    },
    Check {
        name: "audit_listing_filters_and_pages_newest_first",
        run: |s| Box::pin(audit::audit_listing_filters_and_pages_newest_first(s)),
    },
    Check {
        name: "the_events_involving_an_id_are_those_it_acted_in_was_acted_for_in_or_was_the_target_of",
        run: |s| {
            Box::pin(
                audit::the_events_involving_an_id_are_those_it_acted_in_was_acted_for_in_or_was_the_target_of(
                    s,
                ),
            )
        },
    },
    Check {
        name: "checkpoints_are_one_per_seq_and_found_by_seq_and_cut",
        run: |s| Box::pin(audit::checkpoints_are_one_per_seq_and_found_by_seq_and_cut(s)),
    },
    Check {
        name: "a_totp_device_round_trips_oldest_first_and_is_confirmed_once_by_its_owner",
        run: |s| Box::pin(mfa::a_totp_device_round_trips_oldest_first_and_is_confirmed_once_by_its_owner(s)),
    },
    Check {
        name: "a_totp_step_is_accepted_only_when_newer_than_every_step_before",
        run: |s| Box::pin(mfa::a_totp_step_is_accepted_only_when_newer_than_every_step_before(s)),
    },
    Check {
        name: "two_transactions_accepting_one_totp_code_at_once_accept_it_once",
        run: |s| Box::pin(mfa::two_transactions_accepting_one_totp_code_at_once_accept_it_once(s)),
    },
    Check {
        name: "deleting_totp_devices_takes_only_the_owners_and_sweeps_old_unconfirmed_ones",
        run: |s| {
            Box::pin(mfa::deleting_totp_devices_takes_only_the_owners_and_sweeps_old_unconfirmed_ones(s))
        },
    },
    Check {
        name: "a_totp_seed_is_found_resealed_and_counted_like_personal_data",
        run: |s| Box::pin(mfa::a_totp_seed_is_found_resealed_and_counted_like_personal_data(s)),
    },
    Check {
        name: "recovery_codes_are_replaced_whole_and_each_is_spent_once_by_its_owner",
        run: |s| Box::pin(mfa::recovery_codes_are_replaced_whole_and_each_is_spent_once_by_its_owner(s)),
    },
    Check {
        name: "two_transactions_spending_one_recovery_code_at_once_spend_it_once",
        run: |s| Box::pin(mfa::two_transactions_spending_one_recovery_code_at_once_spend_it_once(s)),
    },
    Check {
        name: "a_passkey_round_trips_and_a_registered_credential_id_is_a_conflict",
        run: |s| Box::pin(mfa::a_passkey_round_trips_and_a_registered_credential_id_is_a_conflict(s)),
    },
    Check {
        name: "a_passkey_is_updated_and_deleted_only_by_its_owner",
        run: |s| Box::pin(mfa::a_passkey_is_updated_and_deleted_only_by_its_owner(s)),
    },
    Check {
        name: "an_mfa_challenge_is_read_while_open_and_unexpired_and_records_its_ceremony",
        run: |s| Box::pin(mfa::an_mfa_challenge_is_read_while_open_and_unexpired_and_records_its_ceremony(s)),
    },
    Check {
        name: "wrong_answers_are_counted_and_close_an_mfa_challenge_at_the_limit",
        run: |s| Box::pin(mfa::wrong_answers_are_counted_and_close_an_mfa_challenge_at_the_limit(s)),
    },
    Check {
        name: "an_mfa_challenge_is_spent_once_and_not_once_expired",
        run: |s| Box::pin(mfa::an_mfa_challenge_is_spent_once_and_not_once_expired(s)),
    },
    Check {
        name: "two_transactions_spending_one_mfa_challenge_at_once_get_it_once",
        run: |s| Box::pin(mfa::two_transactions_spending_one_mfa_challenge_at_once_get_it_once(s)),
    },
    Check {
        name: "purging_mfa_challenges_takes_those_expired_before_the_instant",
        run: |s| Box::pin(mfa::purging_mfa_challenges_takes_those_expired_before_the_instant(s)),
    },
    Check {
        name: "deleting_an_accounts_login_challenges_leaves_other_accounts_alone",
        run: |s| Box::pin(mfa::deleting_an_accounts_login_challenges_leaves_other_accounts_alone(s)),
    },
    Check {
        name: "an_organization_requires_mfa_once_set_and_its_members_are_found",
        run: |s| Box::pin(mfa::an_organization_requires_mfa_once_set_and_its_members_are_found(s)),
    },
    Check {
        name: "a_sessions_authentication_is_recorded_only_while_it_is_live",
        run: |s| Box::pin(mfa::a_sessions_authentication_is_recorded_only_while_it_is_live(s)),
    },
    Check {
        name: "deleting_all_factors_takes_every_factor_and_challenge_of_that_account_only",
        run: |s| Box::pin(mfa::deleting_all_factors_takes_every_factor_and_challenge_of_that_account_only(s)),
    },
    Check {
        name: "deleting_an_account_takes_its_factors",
        run: |s| Box::pin(mfa::deleting_an_account_takes_its_factors(s)),
    },
];

/// The migration version [`a_database_migrated_by_a_newer_binary_is_refused`] expects the runner to
/// record, standing for a schema change made by a later Portcullis.
pub const FUTURE_MIGRATION_VERSION: i64 = 99_990_101_000_000;

// ---------------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------------

/// Before anything runs, the store reports every embedded migration as pending and none applied,
/// including on an engine where the bookkeeping table does not exist yet.
pub async fn a_fresh_database_has_every_migration_pending(store: &dyn Store) -> Outcome {
    let status = store.migration_status().await.step("read the migration status")?;

    ensure_eq("applied migrations", &status.applied, &Vec::new())?;
    ensure(!status.pending.is_empty(), || "the binary embeds no migration at all".into())?;
    ensure(status.pending.windows(2).all(|w| w[0] < w[1]), || {
        format!("pending versions are not in ascending order: {:?}", status.pending)
    })?;
    ensure_eq("unknown migrations", &status.unknown, &Vec::new())?;
    ensure(!status.is_current(), || "a fresh database claims to be current".into())?;
    ensure_eq("schema version", &status.schema_version(), &0)
}

/// `migrate` applies exactly what was pending, leaves the schema current, and a second run is a
/// no-op: every node runs it at start, so it must be safe to repeat.
pub async fn migrate_applies_everything_and_is_idempotent(store: &dyn Store) -> Outcome {
    let before = store.migration_status().await.step("read the migration status")?;

    let applied = store.migrate().await.step("migrate a fresh database")?;
    let after = store.migration_status().await.step("read the status after migrating")?;
    let again = store.migrate().await.step("migrate a second time")?;
    let last = store.migration_status().await.step("read the status after migrating twice")?;

    ensure_eq("versions reported as applied", &applied, &before.pending)?;
    ensure_eq("versions recorded as applied", &after.applied, &before.pending)?;
    ensure(after.is_current(), || format!("the schema is not current after migrating: {after:?}"))?;
    ensure_eq("schema version", &after.schema_version(), &before.pending.last().copied().unwrap_or(0))?;
    ensure_eq("versions applied by the second run", &again, &Vec::new())?;
    ensure_eq("status after the second run", &last, &after)
}

/// A store must notice a schema written by a newer Portcullis, report the versions it does not
/// know, and refuse to migrate, so an older binary never serves (or damages) newer data.
///
/// `record_future_migration` must record [`FUTURE_MIGRATION_VERSION`] as applied in the engine's
/// migration table; it is awaited after this check has migrated the database.
pub async fn a_database_migrated_by_a_newer_binary_is_refused(
    store: &dyn Store,
    record_future_migration: impl Future<Output = Result<(), String>>,
) -> Outcome {
    migrated(store).await?;
    record_future_migration.await.map_err(|e| Failure(format!("record a migration from the future: {e}")))?;

    let status = store.migration_status().await.step("read the migration status")?;
    let migrate = store.migrate().await;

    ensure_eq("unknown migrations", &status.unknown, &vec![FUTURE_MIGRATION_VERSION])?;
    ensure(!status.is_current(), || "a database from a newer binary claims to be current".into())?;
    match migrate {
        Err(StoreError::Migration(_)) => Ok(()),
        Err(other) => Err(Failure(format!(
            "migrate failed, but not with StoreError::Migration: {}",
            error_chain(&other)
        ))),
        Ok(applied) => {
            Err(Failure(format!("migrate accepted a database from a newer binary (applied {applied:?})")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The instance aggregate
// ---------------------------------------------------------------------------------------------

/// A migrated database has no instance row until the first start writes one.
pub async fn instance_is_absent_before_bootstrap(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let found = committed_instance(store).await?;

    ensure_eq("instance before bootstrap", &found, &None)
}

/// What is written comes back unchanged: the id, the timestamp to the millisecond (beyond 32 bits),
/// and the version text.
pub async fn instance_round_trips(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let meta = InstanceMeta {
        id: InstanceId::from_random_bytes([0xa5; 16]),
        created_at: Timestamp::from_unix_millis(1_767_225_600_123),
        created_by_version: "0.1.0-rc.1+build.7".into(),
    };

    write_instance(store, &meta).await?;
    let found = committed_instance(store).await?;

    ensure_eq("instance read back", &found, &Some(meta))
}

/// There is one instance row: a second insert fails with `Conflict { entity: "instance" }` and the
/// first row is left untouched.
pub async fn a_second_instance_row_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;

    let mut tx = store.begin().await.step("begin the second insert")?;
    let second = tx.insert_instance(&instance(2)).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let found = committed_instance(store).await?;

    ensure_conflict("the second insert", second, "instance")?;
    ensure_eq("instance after the conflict", &found, &Some(instance(1)))
}

/// After a failed statement the transaction cannot commit on either engine (PostgreSQL aborts it;
/// SQLite would carry on), so code tested on SQLite cannot rely on committing past an error.
pub async fn a_transaction_in_which_a_statement_failed_refuses_to_commit(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;
    let mut tx = store.begin().await.step("begin")?;
    let second = tx.insert_instance(&instance(2)).await;
    ensure_conflict("the conflicting insert", second, "instance")?;
    match tx.commit().await {
        Err(StoreError::Database(_)) => {}
        other => {
            return Err(Failure(format!(
                "commit after a failed statement: expected Database error, got {other:?}"
            )));
        }
    }
    let found = committed_instance(store).await?;
    ensure_eq("instance after the refused commit", &found, &Some(instance(1)))
}

/// Two nodes starting together both try to create the instance; whichever commits first wins and
/// the other gets `Conflict`, which is how they agree on one identity (see `InstanceStore`).
///
/// The second transaction starts while the first is still open: SQLite makes it wait for the
/// single writer, PostgreSQL makes its insert wait on the first one's uncommitted key. Either way
/// it must end in `Conflict`, not in a second row, a deadlock or a timeout.
pub async fn two_nodes_bootstrapping_at_once_agree_on_one_instance(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut first = store.begin().await.step("begin the first node's bootstrap")?;
    first.insert_instance(&instance(1)).await.step("insert the first node's instance")?;

    let second = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_instance(&instance(2)).await;
        // Dropping the transaction rolls it back; nothing to keep either way.
        drop(tx);
        inserted
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    let found = committed_instance(store).await?;

    first_commit.step("commit the first node's bootstrap")?;
    ensure_conflict("the second node's insert", second, "instance")?;
    ensure_eq("instance after the race", &found, &Some(instance(1)))
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

/// Inside one transaction, a read after a write sees the write (a use case checks what it did
/// before it writes the audit record).
pub async fn a_transaction_sees_its_own_writes(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    let seen = tx.instance().await.step("read the instance in the same transaction")?;
    tx.rollback().await.step("roll back")?;

    ensure_eq("instance seen by its own transaction", &seen, &Some(instance(1)))
}

/// Until a transaction commits, no other transaction sees its changes (no dirty reads).
pub async fn uncommitted_writes_are_invisible_to_other_transactions(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut writer = store.begin().await.step("begin the writer")?;
    writer.insert_instance(&instance(1)).await.step("insert the instance")?;
    let seen_meanwhile = committed_instance(store).await?;
    writer.commit().await.step("commit the writer")?;
    let seen_after = committed_instance(store).await?;

    ensure_eq("instance seen before the commit", &seen_meanwhile, &None)?;
    ensure_eq("instance seen after the commit", &seen_after, &Some(instance(1)))
}

/// Dropping a transaction without `commit` discards its changes, and the store stays writable:
/// an early `?` return in a use case must not leave a half-written change or a held lock.
pub async fn an_uncommitted_transaction_leaves_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    drop(tx);
    let found = committed_instance(store).await?;
    write_instance(store, &instance(2)).await?;
    let after = committed_instance(store).await?;

    ensure_eq("instance after a dropped transaction", &found, &None)?;
    ensure_eq("instance written after the dropped transaction", &after, &Some(instance(2)))
}

/// `rollback` discards every change in the transaction, and the store stays writable.
pub async fn an_explicit_rollback_leaves_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_instance(&instance(1)).await.step("insert the instance")?;
    tx.rollback().await.step("roll back")?;
    let found = committed_instance(store).await?;
    write_instance(store, &instance(2)).await?;
    let after = committed_instance(store).await?;

    ensure_eq("instance after a rollback", &found, &None)?;
    ensure_eq("instance written after the rollback", &after, &Some(instance(2)))
}

/// A read transaction begun after a commit sees it (the readers are not stale copies).
pub async fn a_read_transaction_sees_committed_data(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    write_instance(store, &instance(1)).await?;
    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let seen = reader.instance().await.step("read the instance")?;
    reader.commit().await.step("end the read transaction")?;

    ensure_eq("instance seen by the reader", &seen, &Some(instance(1)))
}

/// A read transaction is one consistent snapshot: a commit made after its first read does not
/// appear in its later reads, so a page assembled from several queries never mixes two states.
pub async fn a_read_transaction_keeps_one_snapshot(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let first_read = reader.instance().await.step("read before the commit")?;
    write_instance(store, &instance(1)).await?;
    let second_read = reader.instance().await.step("read again after the commit")?;
    reader.commit().await.step("end the read transaction")?;
    let fresh_read = committed_instance(store).await?;

    ensure_eq("first read in the snapshot", &first_read, &None)?;
    ensure_eq("second read in the snapshot", &second_read, &None)?;
    ensure_eq("read in a new transaction", &fresh_read, &Some(instance(1)))
}

/// A read transaction refuses to write, with `StoreError::Database`, and nothing is stored: a use
/// case that writes through `begin_read` by mistake fails in tests on every engine instead of
/// writing on one of them.
pub async fn a_read_transaction_refuses_writes(store: &dyn Store) -> Outcome {
    migrated(store).await?;

    let mut reader = store.begin_read().await.step("begin a read transaction")?;
    let attempt = reader.insert_instance(&instance(1)).await;
    reader.rollback().await.step("roll back the read transaction")?;
    let found = committed_instance(store).await?;

    match attempt {
        Err(StoreError::Database(_)) => {}
        Err(other) => {
            return Err(Failure(format!(
                "the write failed, but not with StoreError::Database: {}",
                error_chain(&other)
            )));
        }
        Ok(()) => return Err(Failure("a read transaction accepted an insert".into())),
    }
    ensure_eq("instance after the refused write", &found, &None)
}

// ---------------------------------------------------------------------------------------------
// The account aggregate
// ---------------------------------------------------------------------------------------------

/// Every field of an account comes back as written, the optional ones both empty and set, the sealed
/// ones byte for byte, and the account is found by the blind index of its address (computed in `app`
/// from the case-folded address, so one index is every spelling of it).
pub async fn a_user_round_trips_and_is_found_by_its_email_index(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let bare = user(1, "bare@example.com");
    let full = StoredUser {
        email_verified_at: Some(at(5)),
        display_name: Some(sealed("Zoë d'Arc")),
        status: UserStatus::Locked,
        role: BuiltinRole::Owner,
        updated_at: at(7),
        last_login_at: Some(at(9)),
        pii_key: "pii-2".to_owned(),
        index_key: "bi-2".to_owned(),
        ..user(2, "Full.Name@Example.COM")
    };

    write_users(store, &[bare.clone(), full.clone()]).await?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.user_by_id(full.id).await.step("read the full user by id")?;
    let bare_by_id = tx.user_by_id(bare.id).await.step("read the bare user by id")?;
    let by_index = tx.user_by_email_index(&index(2)).await.step("look up by the blind index")?;
    let unknown_id = tx.user_by_id(user_id(3)).await.step("read an unknown id")?;
    let unknown_index = tx.user_by_email_index(&index(3)).await.step("look up an unknown blind index")?;
    let count = tx.count_users().await.step("count the users")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("full user by id", &by_id, &Some(full.clone()))?;
    ensure_eq("bare user by id", &bare_by_id, &Some(bare))?;
    ensure_eq("user by blind index", &by_index, &Some(full))?;
    ensure_eq("unknown id", &unknown_id, &None)?;
    ensure_eq("unknown blind index", &unknown_index, &None)?;
    ensure_eq("number of users", &count, &2)
}

/// Keyset pagination: pages in id order that neither skip nor repeat, and a status filter.
pub async fn users_are_listed_a_page_at_a_time_in_id_order_and_by_status(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut users: Vec<StoredUser> = (1..=5).map(|n| user(n, &format!("user{n}@example.com"))).collect();
    users[1].status = UserStatus::Disabled;
    users[3].status = UserStatus::Disabled;
    write_users(store, &users).await?;
    let mut ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    ids.sort_by_key(|id| id.to_string());

    let mut tx = store.begin_read().await.step("begin a read")?;
    let first = tx.list_users(None, None, 2).await.step("first page")?;
    let second = tx.list_users(first.last().map(|u| u.id), None, 2).await.step("second page")?;
    let third = tx.list_users(second.last().map(|u| u.id), None, 2).await.step("third page")?;
    let disabled = tx.list_users(None, Some(UserStatus::Disabled), 10).await.step("disabled ones")?;
    let after_last = tx.list_users(ids.last().copied(), None, 10).await.step("after the last")?;
    tx.commit().await.step("end the read")?;

    let paged: Vec<UserId> = first.iter().chain(&second).chain(&third).map(|u| u.id).collect();
    ensure_eq("page sizes", &(first.len(), second.len(), third.len()), &(2, 2, 1))?;
    ensure_eq("every user once, in id order", &paged, &ids)?;
    let mut expected: Vec<UserId> = vec![users[1].id, users[3].id];
    expected.sort_by_key(|id| id.to_string());
    ensure_eq("the disabled users", &disabled.iter().map(|u| u.id).collect::<Vec<_>>(), &expected)?;
    ensure_eq("nothing after the last", &after_last.len(), &0)
}

/// Status and role updates land on the one account named, report a missing one, and only active
/// owners count as owners.
pub async fn an_accounts_status_and_role_change_and_active_owners_are_counted(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let owner = StoredUser { role: BuiltinRole::Owner, ..user(1, "owner@example.com") };
    let second = StoredUser { role: BuiltinRole::Owner, ..user(2, "second@example.com") };
    let member = user(3, "member@example.com");
    write_users(store, &[owner.clone(), second.clone(), member.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let owners_before = tx.count_active_with_role(BuiltinRole::Owner).await.step("count owners")?;
    let disabled = tx.set_user_status(second.id, UserStatus::Disabled, at(10)).await.step("disable")?;
    let promoted = tx.set_user_role(member.id, BuiltinRole::Admin, at(11)).await.step("promote")?;
    let missing =
        tx.set_user_status(user_id(9), UserStatus::Disabled, at(12)).await.step("disable a stranger")?;
    let missing_role =
        tx.set_user_role(user_id(9), BuiltinRole::Owner, at(12)).await.step("promote a stranger")?;
    let owners_after = tx.count_active_with_role(BuiltinRole::Owner).await.step("count owners again")?;
    let disabled_login =
        tx.record_login(second.id, at(13)).await.step("record a disabled account's login")?;
    tx.commit().await.step("commit")?;
    ensure_eq("a disabled account's login is not recorded", &disabled_login, &false)?;

    ensure_eq("owners before", &owners_before, &2)?;
    ensure_eq("owners after one is disabled", &owners_after, &1)?;
    ensure_eq(
        "updates found their rows",
        &(disabled, promoted, missing, missing_role),
        &(true, true, false, false),
    )?;
    let second_now = committed_user(store, second.id).await?;
    ensure_eq(
        "disabled",
        &second_now.map(|u| (u.status, u.updated_at)),
        &Some((UserStatus::Disabled, at(10))),
    )?;
    let member_now = committed_user(store, member.id).await?;
    ensure_eq("promoted", &member_now.map(|u| (u.role, u.updated_at)), &Some((BuiltinRole::Admin, at(11))))?;
    let owner_now = committed_user(store, owner.id).await?;
    ensure_eq("the other owner is untouched", &owner_now, &Some(owner))
}

/// Deleting an account removes it with its password; its sessions stay as revoked rows without client
/// details (so other nodes learn of the revocation); deleting it again reports false.
pub async fn deleting_an_account_takes_its_credentials_and_leaves_its_sessions_revoked_and_erased(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let doomed = user(1, "doomed@example.com");
    let kept = user(2, "kept@example.com");
    write_users(store, &[doomed.clone(), kept.clone()]).await?;
    let (gone, stays) = (session(1, doomed.id, 0), session(2, kept.id, 0));
    let mut tx = store.begin().await.step("begin")?;
    let sealed_session = StoredSession {
        session: gone.clone(),
        ip: Some(sealed("203.0.113.9")),
        user_agent: Some(sealed("agent")),
        pii_key: Some(PII_KEY.to_owned()),
    };
    tx.insert_session(&sealed_session, None).await.step("insert a session with client details")?;
    tx.insert_session(&unsealed(stays.clone()), None).await.step("insert another account's session")?;
    tx.set_password_hash(doomed.id, "$argon2id$doomed", at(1)).await.step("set a password")?;
    tx.commit().await.step("commit the setup")?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_user(doomed.id, at(5)).await.step("delete")?;
    let again = tx.delete_user(doomed.id, at(6)).await.step("delete again")?;
    tx.commit().await.step("commit the delete")?;

    ensure_eq("deleted once", &(deleted, again), &(true, false))?;
    ensure_eq("the account is gone", &committed_user(store, doomed.id).await?, &None)?;
    let left = committed_session(store, gone.id).await?;
    ensure_eq("its session is revoked at the delete", &left.map(|s| s.revoked_at), &Some(Some(at(5))))?;
    ensure_eq(
        "the other session stays live",
        &committed_session(store, stays.id).await?.map(|s| s.revoked_at),
        &Some(None),
    )?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let hash = tx.password_hash(doomed.id).await.step("read the password")?;
    let revoked = tx.sessions_revoked_since(at(5)).await.step("list revocations")?;
    let sealed_sessions =
        tx.pii_rows_not_under(PiiTable::Sessions, "another-key", 10).await.step("find sealed sessions")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("its password is gone", &hash, &None)?;
    ensure_eq("other nodes learn of the revocation", &revoked, &vec![gone.id])?;
    ensure_eq("no session keeps client details", &sealed_sessions, &Vec::new())
}

/// A person key is stored once (a second insert, as from another node racing, keeps the first and
/// says so) and never for an account that does not exist; deleting the account takes the key, the
/// digests of its login addresses and its security events' client addresses (the events stay).
pub async fn a_person_key_is_made_once_only_for_a_live_account_and_erasure_takes_what_named_the_person(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let doomed = user(1, "doomed@example.com");
    let kept = user(2, "kept@example.com");
    write_users(store, &[doomed.clone(), kept.clone()]).await?;
    let key = |owner: UserId, text: &str| StoredPersonKey {
        user_id: owner,
        secret: sealed(text),
        pii_key: PII_KEY.to_owned(),
        created_at: at(3),
    };
    let nobody = UserId::from_random_bytes([99; 16]);
    let mut tx = store.begin().await.step("begin")?;
    let first = tx.insert_person_key(&key(doomed.id, "first")).await.step("make a key")?;
    let second = tx.insert_person_key(&key(doomed.id, "second")).await.step("make it again")?;
    let orphan = tx.insert_person_key(&key(nobody, "orphan")).await.step("make one for nobody")?;
    tx.insert_person_key(&key(kept.id, "kept")).await.step("make the other account's key")?;
    let mut with_ip = event(1, SecurityEventKind::LoginFailed, Some(doomed.id), 1);
    with_ip.ip = Some(sealed("203.0.113.9"));
    with_ip.pii_key = Some(PII_KEY.to_owned());
    tx.insert_security_event(&with_ip).await.step("record an event with an address")?;
    tx.remember_login_ip(doomed.id, &[7; 32], at(2)).await.step("remember a login address")?;
    tx.remember_login_ip(kept.id, &[7; 32], at(2)).await.step("and the other account's")?;
    tx.commit().await.step("commit the setup")?;
    ensure_eq("made once, never for nobody", &(first, second, orphan), &(true, false, false))?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let stored = tx.person_key(doomed.id).await.step("read the key")?;
    let none = tx.person_key(nobody).await.step("read nobody's")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("the first key stays", &stored, &Some(key(doomed.id, "first")))?;
    ensure_eq("nobody has none", &none, &None)?;

    let mut tx = store.begin().await.step("begin the delete")?;
    tx.delete_user(doomed.id, at(5)).await.step("delete")?;
    let after = tx.insert_person_key(&key(doomed.id, "after")).await.step("make a key after the delete")?;
    tx.commit().await.step("commit the delete")?;
    ensure_eq("an erased account gets no key back", &after, &false)?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let gone = tx.person_key(doomed.id).await.step("read the erased key")?;
    let other = tx.person_key(kept.id).await.step("read the other key")?;
    let events = tx.security_events_of(doomed.id, 10).await.step("read the events")?;
    let known = tx.login_ip_known(doomed.id, &[7; 32]).await.step("check the login address")?;
    let other_known = tx.login_ip_known(kept.id, &[7; 32]).await.step("and the other account's")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("the key is gone", &gone, &None)?;
    ensure_eq("the other account's stays", &other.map(|k| k.secret), &Some(sealed("kept")))?;
    let kept_events: Vec<(SecurityEventId, bool)> =
        events.iter().map(|e| (e.event.id, e.ip.is_some() || e.pii_key.is_some())).collect();
    ensure_eq("the event stays, without its address", &kept_events, &vec![(with_ip.event.id, false)])?;
    ensure_eq("login addresses are forgotten", &(known, other_known), &(false, true))
}

/// An address already taken (the same blind index, whatever its sealed spelling) is
/// `Conflict { entity: "user" }`, and the first account is left alone: a sign-up cannot take over
/// `Alice@` by registering `alice@`.
pub async fn a_second_account_with_the_same_email_index_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let first = user(1, "Alice@example.com");
    write_users(store, slice::from_ref(&first)).await?;

    let mut tx = store.begin().await.step("begin the second sign-up")?;
    let second = tx.insert_user(&StoredUser { email_index: index(1), ..user(2, "alice@EXAMPLE.com") }).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let found = committed_user(store, first.id).await?;
    let intruder = committed_user(store, user_id(2)).await?;

    ensure_conflict("the second sign-up", second, "user")?;
    ensure_eq("the first account", &found, &Some(first))?;
    ensure_eq("the second account", &intruder, &None)
}

/// Verifying the address records when (and touches `updated_at`); an unknown account says false.
/// A login records its time without counting as a change to the account.
pub async fn verifying_an_email_and_logging_in_are_recorded(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;

    let mut tx = store.begin().await.step("begin")?;
    let verified = tx.mark_email_verified(alice.id, at(10)).await.step("mark the address verified")?;
    let unknown = tx.mark_email_verified(user_id(9), at(10)).await.step("mark an unknown account")?;
    let recorded = tx.record_login(alice.id, at(20)).await.step("record a login")?;
    ensure_eq("an active account's login is recorded", &recorded, &true)?;
    tx.commit().await.step("commit")?;
    let found = committed_user(store, alice.id).await?;

    ensure_eq("verifying an existing account", &verified, &true)?;
    ensure_eq("verifying an unknown account", &unknown, &false)?;
    let expected = StoredUser {
        email_verified_at: Some(at(10)),
        updated_at: at(10),
        last_login_at: Some(at(20)),
        ..alice
    };
    ensure_eq("the account afterwards", &found, &Some(expected))
}

/// A password hash is absent, then set, then replaced by a second set; the re-hash on login swaps it
/// only while it is still the hash that was verified, so it never undoes a password change.
pub async fn a_password_hash_is_set_replaced_and_only_swapped_while_still_expected(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let before = tx.password_hash(alice.id).await.step("read before any password")?;
    tx.set_password_hash(alice.id, "$argon2id$first", at(1)).await.step("set the first hash")?;
    let first = tx.password_hash(alice.id).await.step("read the first hash")?;
    tx.set_password_hash(alice.id, "$argon2id$second", at(2)).await.step("set the second hash")?;
    let stale = tx
        .replace_password_hash(alice.id, "$argon2id$first", "$argon2id$rehash", at(3))
        .await
        .step("swap from a stale hash")?;
    let after_stale = tx.password_hash(alice.id).await.step("read after the stale swap")?;
    let swapped = tx
        .replace_password_hash(alice.id, "$argon2id$second", "$argon2id$rehash", at(4))
        .await
        .step("swap from the current hash")?;
    let no_password = tx
        .replace_password_hash(bob.id, "", "$argon2id$rehash", at(4))
        .await
        .step("swap for an account without a password")?;
    tx.commit().await.step("commit")?;
    let mut reader = store.begin_read().await.step("begin a read")?;
    let committed = reader.password_hash(alice.id).await.step("read the committed hash")?;
    let bobs = reader.password_hash(bob.id).await.step("read the other account's hash")?;
    reader.commit().await.step("end the read")?;

    ensure_eq("hash before any password", &before, &None)?;
    ensure_eq("hash after the first set", &first, &Some("$argon2id$first".to_owned()))?;
    ensure_eq("swap from a stale hash", &stale, &false)?;
    ensure_eq("hash after the stale swap", &after_stale, &Some("$argon2id$second".to_owned()))?;
    ensure_eq("swap from the current hash", &swapped, &true)?;
    ensure_eq("swap without a password", &no_password, &false)?;
    ensure_eq("committed hash", &committed, &Some("$argon2id$rehash".to_owned()))?;
    ensure_eq("the other account's hash", &bobs, &None)
}

/// A single-use token comes back whole (an invite's sealed address byte for byte, with its key)
/// exactly once, only for the purpose it was minted for, and not from the instant it expires.
pub async fn a_one_time_token_is_spent_once_for_its_purpose_before_it_expires(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let reset = one_time(1, OneTimePurpose::PasswordReset, Some(alice.id), 0);
    let invite = StoredOneTimeToken {
        email: Some(sealed("Invitee@Example.com")),
        pii_key: Some(PII_KEY.to_owned()),
        ..one_time(2, OneTimePurpose::Invite, None, 0)
    };
    let expiring = one_time(3, OneTimePurpose::VerifyEmail, Some(alice.id), 0);
    write_tokens(store, &[reset.clone(), invite.clone(), expiring.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let wrong_purpose = tx
        .spend_one_time_token(&reset.token.hash, OneTimePurpose::VerifyEmail, at(1))
        .await
        .step("spend as another purpose")?;
    let spent = tx
        .spend_one_time_token(&reset.token.hash, reset.token.purpose, at(1))
        .await
        .step("spend the reset token")?;
    let again = tx
        .spend_one_time_token(&reset.token.hash, reset.token.purpose, at(2))
        .await
        .step("spend it again")?;
    let invited = tx
        .spend_one_time_token(&invite.token.hash, invite.token.purpose, at(1))
        .await
        .step("spend the invite")?;
    let expired = tx
        .spend_one_time_token(&expiring.token.hash, expiring.token.purpose, expiring.token.expires_at)
        .await
        .step("spend at the expiry instant")?;
    let unknown = tx
        .spend_one_time_token(&token(9), reset.token.purpose, at(1))
        .await
        .step("spend an unknown token")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin().await.step("begin a second transaction")?;
    let after_commit = tx
        .spend_one_time_token(&reset.token.hash, reset.token.purpose, at(3))
        .await
        .step("spend once more")?;
    tx.rollback().await.step("roll back")?;

    ensure_eq("spend as another purpose", &wrong_purpose, &None)?;
    ensure_eq("first spend", &spent, &Some(reset))?;
    ensure_eq("second spend in the same transaction", &again, &None)?;
    ensure_eq("spend of the invite", &invited, &Some(invite))?;
    ensure_eq("spend at the expiry instant", &expired, &None)?;
    ensure_eq("spend of an unknown token", &unknown, &None)?;
    ensure_eq("spend after the commit", &after_commit, &None)
}

/// Voiding spends every unused token of one purpose for one account, and nothing else: not the
/// account's tokens of other purposes, not other accounts' tokens.
pub async fn voiding_one_time_tokens_spends_only_that_accounts_tokens_of_that_purpose(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let reset = OneTimePurpose::PasswordReset;
    let tokens = [
        one_time(1, reset, Some(alice.id), 0),
        one_time(2, reset, Some(alice.id), 1),
        one_time(3, reset, Some(alice.id), 2),
        one_time(4, OneTimePurpose::VerifyEmail, Some(alice.id), 0),
        one_time(5, reset, Some(bob.id), 0),
    ];
    write_tokens(store, &tokens).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.spend_one_time_token(&token(3), reset, at(3)).await.step("spend one of the resets")?;
    let voided = tx.void_one_time_tokens(alice.id, reset, at(4)).await.step("void the resets")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin().await.step("begin the spends")?;
    let mut spendable = Vec::new();
    for t in &tokens {
        let spent =
            tx.spend_one_time_token(&t.token.hash, t.token.purpose, at(5)).await.step("spend a token")?;
        spendable.push(spent.is_some());
    }
    tx.rollback().await.step("roll back")?;

    ensure_eq("tokens voided (the spent one does not count)", &voided, &2)?;
    ensure_eq("tokens still spendable", &spendable, &vec![false, false, false, true, true])
}

/// Only an unused, unexpired token of the asked purpose is live: that is what stops a second setup
/// token from being minted while the first still works.
pub async fn a_live_one_time_token_is_unused_unexpired_and_of_the_purpose(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let setup = one_time(1, OneTimePurpose::Setup, None, 0);
    write_tokens(store, &[one_time(2, OneTimePurpose::Invite, None, 0)]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let with_other_purpose =
        tx.has_live_one_time_token(setup.token.purpose, at(1)).await.step("ask before setup")?;
    tx.insert_one_time_token(&setup).await.step("insert the setup token")?;
    let live = tx.has_live_one_time_token(setup.token.purpose, at(1)).await.step("ask while live")?;
    let at_expiry = tx
        .has_live_one_time_token(setup.token.purpose, setup.token.expires_at)
        .await
        .step("ask at its expiry")?;
    tx.spend_one_time_token(&setup.token.hash, setup.token.purpose, at(2))
        .await
        .step("spend the setup token")?;
    let spent = tx.has_live_one_time_token(setup.token.purpose, at(2)).await.step("ask once spent")?;
    tx.commit().await.step("commit")?;

    ensure_eq("live setup token with only an invite stored", &with_other_purpose, &false)?;
    ensure_eq("live setup token before its expiry", &live, &true)?;
    ensure_eq("live setup token at its expiry", &at_expiry, &false)?;
    ensure_eq("live setup token once spent", &spent, &false)
}

/// Two requests presenting the same password-reset link at once (a double click, or an attacker
/// racing the owner): exactly one gets the token.
///
/// As in the refresh-token race, the first is still at work (setting the password, signing out the
/// account's sessions) when the second arrives: SQLite queues it behind the single writer, and on
/// PostgreSQL its conditional `UPDATE` waits on the first one's row lock and then matches nothing.
pub async fn two_transactions_spending_one_one_time_token_at_once_get_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let reset = one_time(1, OneTimePurpose::PasswordReset, Some(alice.id), 0);
    write_tokens(store, slice::from_ref(&reset)).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first reset")?;
    let first_spend = first
        .spend_one_time_token(&reset.token.hash, reset.token.purpose, at(1))
        .await
        .step("the first reset's spend")?;
    let rest_of_first = async move {
        first.set_password_hash(alice.id, "$argon2id$reset", at(1)).await?;
        first.revoke_sessions_of(alice.id, None, at(1), RevokeReason::PasswordChanged).await?;
        first.commit().await
    };
    let (second, first_commit) = tokio::join!(
        spend_one_time_token_alone(store, reset.token.hash, reset.token.purpose, at(2)),
        rest_of_first
    );
    first_commit.step("finish the first reset")?;
    let second = second.step("the second reset")?;

    ensure_eq("the first reset", &first_spend, &Some(reset))?;
    ensure_eq("the second reset", &second, &None)
}

/// Two first-owner setups at once (two live setup tokens): each locks the accounts, counts them and
/// creates one only if there is none. The second waits for the first to commit and then sees its
/// account, so exactly one is created. Without the lock, PostgreSQL's READ COMMITTED lets both
/// count zero.
pub async fn two_first_owner_setups_at_once_create_one_account(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    open_two_connections(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");

    let mut first = store.begin().await.step("begin the first setup")?;
    first.lock_users().await.step("the first setup's lock")?;
    let first_count = first.count_users().await.step("the first setup's count")?;
    let second = async {
        let mut tx = store.begin().await?;
        tx.lock_users().await?;
        let count = tx.count_users().await?;
        if count == 0 {
            tx.insert_user(&bob).await?;
        }
        tx.commit().await?;
        Ok::<u64, StoreError>(count)
    };
    let rest_of_first = async move {
        // Give the second setup time to reach its count while the first is still open: a correct
        // store makes it wait on the lock whatever this delay; a store without one lets it count
        // zero now. (The delay decides nothing for a correct store, so it cannot make this flaky.)
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if first_count == 0 {
            first.insert_user(&alice).await?;
        }
        first.commit().await
    };
    let (second_count, first_commit) = tokio::join!(second, rest_of_first);
    first_commit.step("finish the first setup")?;
    let second_count = second_count.step("the second setup")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let total = tx.count_users().await.step("count the accounts")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("accounts the first setup saw", &first_count, &0)?;
    ensure_eq("accounts the second setup saw", &second_count, &1)?;
    ensure_eq("accounts after both", &total, &1)
}

// ---------------------------------------------------------------------------------------------
// The session aggregate
// ---------------------------------------------------------------------------------------------

/// Every field of a session comes back as written, the optional ones both empty and set; a cookie
/// session is found by its cookie's hash, and nothing is found by an unknown hash or id. (Its sealed
/// client details come back only with the session list; see the next checks.)
pub async fn a_session_round_trips_and_is_found_by_its_cookie(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let bearer = session(1, alice.id, 0);
    let cookie = Session {
        kind: SessionKind::Cookie,
        last_seen_at: at(3),
        mfa_level: 2,
        amr: AuthMethods::PASSWORD.with(MfaMethod::Totp),
        authenticated_at: at(2),
        mfa_enrollment_required: true,
        revoked_at: Some(at(4)),
        ..session(2, alice.id, 1)
    };
    let cookie_stored = StoredSession {
        ip: Some(sealed("2001:db8::1")),
        user_agent: Some(sealed("Mozilla/5.0 (X11; Linux x86_64) \"quoted\" ✓")),
        pii_key: Some(PII_KEY.to_owned()),
        ..unsealed(cookie.clone())
    };

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_session(&unsealed(bearer.clone()), None).await.step("insert the bearer session")?;
    tx.insert_session(&cookie_stored, Some(&token(2))).await.step("insert the cookie session")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let bearer_read = tx.session(bearer.id).await.step("read the bearer session")?;
    let cookie_read = tx.session(cookie.id).await.step("read the cookie session")?;
    let by_cookie = tx.session_by_cookie(&token(2)).await.step("look up by cookie")?;
    let unknown_cookie = tx.session_by_cookie(&token(9)).await.step("look up an unknown cookie")?;
    let unknown_id = tx.session(session_id(9)).await.step("read an unknown session")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("bearer session", &bearer_read, &Some(bearer))?;
    ensure_eq("cookie session", &cookie_read, &Some(cookie.clone()))?;
    ensure_eq("session by cookie", &by_cookie, &Some(cookie))?;
    ensure_eq("session by unknown cookie", &unknown_cookie, &None)?;
    ensure_eq("unknown session", &unknown_id, &None)
}

/// The session list holds the account's own sessions that are neither revoked nor past their
/// absolute expiry, newest first, ties broken by id so both engines list them alike.
pub async fn sessions_of_lists_live_sessions_newest_first(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let now = at(1_000);
    let oldest = session(1, alice.id, 10);
    let newest = session(2, alice.id, 30);
    let tie_low = session(3, alice.id, 20);
    let tie_high = session(4, alice.id, 20);
    let revoked = Session { revoked_at: Some(at(40)), ..session(5, alice.id, 40) };
    let expired = Session { expires_at: now, ..session(6, alice.id, 50) };
    let bobs = session(7, bob.id, 60);
    write_sessions(
        store,
        &[oldest.clone(), newest.clone(), tie_low.clone(), tie_high.clone(), revoked, expired, bobs],
    )
    .await?;

    let listed = committed_sessions_of(store, alice.id, now).await?;
    ensure_eq("alice's live sessions", &listed, &vec![newest, tie_high, tie_low, oldest])?;

    // The metric counts everyone's live sessions with the same rule: not revoked, not expired.
    let mut tx = store.begin_read().await.step("begin read")?;
    let active = tx.count_active_sessions(now).await.step("count active sessions")?;
    tx.rollback().await.step("rollback")?;
    ensure_eq("live sessions of everyone", &active, &5)
}

/// The session history holds every session of the account whatever its state (live, revoked with
/// the reason it was revoked for, past its expiry), newest first with ties broken by id, sealed
/// client details byte for byte, and nobody else's; read a page at a time from the last session of
/// the page before, it gives the same sessions without repeats or gaps.
pub async fn the_session_history_holds_every_session_of_the_account_newest_first_with_why_it_ended(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let oldest = session(1, alice.id, 10);
    let logged_out = session(2, alice.id, 20);
    let tie_low = session(3, alice.id, 30);
    let tie_high = session(4, alice.id, 30);
    let expired = Session { expires_at: at(45), ..session(5, alice.id, 40) };
    let newest = session(6, alice.id, 50);
    let bobs = session(7, bob.id, 60);
    let sealed_newest = StoredSession {
        ip: Some(sealed("198.51.100.23")),
        user_agent: Some(sealed("curl/8.5.0")),
        pii_key: Some(PII_KEY.to_owned()),
        ..unsealed(newest.clone())
    };
    let mut tx = store.begin().await.step("begin")?;
    for plain in [&oldest, &logged_out, &tie_low, &tie_high, &expired, &bobs] {
        tx.insert_session(&unsealed(plain.clone()), None).await.step("insert a session")?;
    }
    tx.insert_session(&sealed_newest, None).await.step("insert the sealed session")?;
    tx.revoke_session(alice.id, logged_out.id, at(25), RevokeReason::Logout).await.step("log out")?;
    tx.revoke_sessions_of(alice.id, Some(newest.id), at(55), RevokeReason::PasswordChanged)
        .await
        .step("revoke all but the newest")?;
    tx.commit().await.step("commit")?;

    let record = |session: Session, revoked: Option<(i64, &str)>| SessionRecord {
        stored: unsealed(Session { revoked_at: revoked.map(|(t, _)| at(t)), ..session }),
        revoked_reason: revoked.map(|(_, reason)| reason.to_owned()),
    };
    let expected = vec![
        SessionRecord { stored: sealed_newest, revoked_reason: None },
        // Past its absolute expiry, so not live: the revocation leaves it as it was.
        record(expired, None),
        record(tie_high, Some((55, "password_changed"))),
        record(tie_low, Some((55, "password_changed"))),
        record(logged_out, Some((25, "logout"))),
        record(oldest, Some((55, "password_changed"))),
    ];
    let everything = session_history_page(store, alice.id, None, 100).await?;
    ensure_eq("alice's whole session history", &everything, &expected)?;
    for limit in 1..=4 {
        let mut paged = Vec::new();
        let mut before = None;
        for _ in 0..=expected.len() {
            let page = session_history_page(store, alice.id, before, limit).await?;
            ensure(page.len() <= limit as usize, || format!("a page of {limit} holds {}", page.len()))?;
            let done = page.len() < limit as usize;
            before = page.last().map(|r| (r.stored.session.created_at, r.stored.session.id));
            paged.extend(page);
            if done {
                break;
            }
        }
        ensure_eq(&format!("alice's history read {limit} at a time"), &paged, &expected)?;
    }
    ensure_eq("a limit of 0", &session_history_page(store, alice.id, None, 0).await?, &Vec::new())?;
    let bobs_history = session_history_page(store, bob.id, None, 100).await?;
    ensure_eq("bob's history", &bobs_history, &vec![record(bobs, None)])
}

/// One page of the account's session history, read in a transaction of its own.
async fn session_history_page(
    store: &dyn Store,
    user: UserId,
    before: Option<(Timestamp, SessionId)>,
    limit: u32,
) -> Result<Vec<SessionRecord>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.session_history(user, before, limit).await.step("read the session history")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Retention deletes sessions revoked or expired before the cut (with their refresh tokens), security
/// events recorded before it, and lists only never-confirmed, never-used member accounts created
/// before it; each call deletes at most its limit.
pub async fn retention_purges_only_what_ended_or_aged_before_the_cut_in_bounded_batches(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let cut = at(1_000);
    let old_unused = user(1, "old@example.com");
    let verified = StoredUser { email_verified_at: Some(at(5)), ..user(2, "verified@example.com") };
    let used = StoredUser { last_login_at: Some(at(5)), ..user(3, "used@example.com") };
    let admin = StoredUser { role: BuiltinRole::Admin, ..user(4, "admin@example.com") };
    let recent = StoredUser { created_at: at(2_000), updated_at: at(2_000), ..user(5, "new@example.com") };
    write_users(store, &[old_unused.clone(), verified, used.clone(), admin, recent]).await?;
    let revoked_long_ago = Session { revoked_at: Some(at(500)), ..session(1, used.id, 10) };
    let expired_long_ago = Session { expires_at: at(900), ..session(2, used.id, 10) };
    let revoked_recently = Session { revoked_at: Some(at(1_500)), ..session(3, used.id, 10) };
    let live = Session { expires_at: at(5_000), ..session(4, used.id, 10) };
    write_sessions(store, &[revoked_long_ago.clone(), expired_long_ago.clone(), revoked_recently, live])
        .await?;
    let mut tx = store.begin().await.step("begin")?;
    for (seed, offset) in [(1, 10), (2, 999), (3, 1_000), (4, 1_500)] {
        tx.insert_security_event(&event(seed, SecurityEventKind::LoginFailed, None, offset))
            .await
            .step("insert a security event")?;
    }
    tx.commit().await.step("commit")?;

    let mut tx = store.begin().await.step("begin")?;
    let accounts = tx.unverified_accounts_before(cut, 10).await.step("list unconfirmed accounts")?;
    ensure_eq("unconfirmed, unused member accounts before the cut", &accounts, &vec![old_unused.id])?;
    let first = tx.purge_ended_sessions(cut, 1).await.step("purge one ended session")?;
    let rest = tx.purge_ended_sessions(cut, 10).await.step("purge the other")?;
    let events = tx.purge_security_events(cut, 10).await.step("purge old security events")?;
    tx.commit().await.step("commit")?;
    ensure_eq("a batch stops at its limit, the next takes the rest", &(first, rest), &(1, 1))?;
    ensure_eq("security events strictly before the cut", &events, &2)?;

    let mut tx = store.begin_read().await.step("begin read")?;
    for gone in [&revoked_long_ago, &expired_long_ago] {
        ensure_eq("an ended session is gone", &tx.session(gone.id).await.step("read")?.is_some(), &false)?;
    }
    let kept = tx.count_active_sessions(at(1_000)).await.step("count")?;
    tx.rollback().await.step("rollback")?;
    // Left: the session revoked after the cut and the live one (live at the cut).
    ensure_eq("live sessions left", &kept, &1)
}

/// The session list carries each session's sealed ip and user agent byte for byte with the key that
/// sealed them, and a session recorded without them comes back without them (and without a key).
pub async fn a_sessions_sealed_client_details_come_back_with_the_session_list(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let full = StoredSession {
        ip: Some(sealed("198.51.100.23")),
        user_agent: Some(sealed("curl/8.5.0")),
        pii_key: Some("pii-2".to_owned()),
        ..unsealed(session(1, alice.id, 20))
    };
    let ip_only = StoredSession {
        ip: Some(sealed("2001:db8::2")),
        pii_key: Some(PII_KEY.to_owned()),
        ..unsealed(session(2, alice.id, 10))
    };
    let bare = unsealed(session(3, alice.id, 0));

    let mut tx = store.begin().await.step("begin")?;
    for stored in [&full, &ip_only, &bare] {
        tx.insert_session(stored, None).await.step("insert a session")?;
    }
    tx.commit().await.step("commit")?;
    let listed = committed_stored_sessions_of(store, alice.id, at(100)).await?;

    ensure_eq("alice's sessions with their client details", &listed, &vec![full, ip_only, bare])
}

/// Revoking is scoped to the owner: another account's session id is refused exactly as an unknown
/// or already revoked one is, and its session stays live.
pub async fn revoking_another_accounts_session_is_refused_and_changes_nothing(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let mallory = user(2, "mallory@example.com");
    write_users(store, &[alice.clone(), mallory.clone()]).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    let by_other = tx
        .revoke_session(mallory.id, target.id, at(1), RevokeReason::UserRevoked)
        .await
        .step("revoke as another account")?;
    let unknown = tx
        .revoke_session(alice.id, session_id(9), at(1), RevokeReason::UserRevoked)
        .await
        .step("revoke an unknown session")?;
    tx.commit().await.step("commit")?;
    let untouched = committed_session(store, target.id).await?;
    let mut tx = store.begin().await.step("begin the owner's revocation")?;
    let by_owner = tx
        .revoke_session(alice.id, target.id, at(2), RevokeReason::Logout)
        .await
        .step("revoke as the owner")?;
    let twice = tx
        .revoke_session(alice.id, target.id, at(3), RevokeReason::Logout)
        .await
        .step("revoke a second time")?;
    tx.commit().await.step("commit the owner's revocation")?;
    let revoked = committed_session(store, target.id).await?;

    ensure_eq("revoking another account's session", &by_other, &false)?;
    ensure_eq("revoking an unknown session", &unknown, &false)?;
    ensure_eq("the session after the refused revocation", &untouched, &Some(target.clone()))?;
    ensure_eq("revoking as the owner", &by_owner, &true)?;
    ensure_eq("revoking a second time", &twice, &false)?;
    ensure_eq("the revoked session", &revoked, &Some(Session { revoked_at: Some(at(2)), ..target }))
}

/// "Sign out everywhere else" revokes every live session of the account but the one kept, leaves
/// earlier revocations, sessions already past their absolute expiry and other accounts alone, and
/// counts what it revoked ("live" as in `sessions_of`).
pub async fn revoking_all_sessions_of_an_account_keeps_the_one_asked_for(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let keep = session(1, alice.id, 0);
    let other = session(2, alice.id, 1);
    let third = session(3, alice.id, 2);
    let earlier = Session { revoked_at: Some(at(3)), ..session(4, alice.id, 3) };
    let expired = Session { expires_at: at(10), ..session(6, alice.id, 4) };
    let bobs = session(5, bob.id, 0);
    write_sessions(
        store,
        &[keep.clone(), other.clone(), third, earlier.clone(), expired.clone(), bobs.clone()],
    )
    .await?;

    let mut tx = store.begin().await.step("begin")?;
    let revoked = tx
        .revoke_sessions_of(alice.id, Some(keep.id), at(10), RevokeReason::PasswordChanged)
        .await
        .step("revoke all but one")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let left = tx.sessions_of(alice.id, at(11)).await.step("list alice's sessions")?;
    let other_read = tx.session(other.id).await.step("read a revoked session")?;
    let earlier_read = tx.session(earlier.id).await.step("read the earlier revocation")?;
    let expired_read = tx.session(expired.id).await.step("read the expired session")?;
    let bobs_left = tx.sessions_of(bob.id, at(11)).await.step("list bob's sessions")?;
    tx.commit().await.step("end the read")?;
    let mut tx = store.begin().await.step("begin the second revocation")?;
    let rest = tx
        .revoke_sessions_of(alice.id, None, at(12), RevokeReason::UserRevoked)
        .await
        .step("revoke all without keeping one")?;
    tx.commit().await.step("commit the second revocation")?;
    let none_left = committed_sessions_of(store, alice.id, at(13)).await?;

    ensure_eq("sessions revoked", &revoked, &2)?;
    ensure_eq("alice's sessions left", &left, &vec![unsealed(keep)])?;
    ensure_eq("a revoked session", &other_read, &Some(Session { revoked_at: Some(at(10)), ..other }))?;
    ensure_eq("the earlier revocation", &earlier_read, &Some(earlier))?;
    ensure_eq("the expired session", &expired_read, &Some(expired))?;
    ensure_eq("bob's sessions", &bobs_left, &vec![unsealed(bobs)])?;
    ensure_eq("sessions revoked without keeping one", &rest, &1)?;
    ensure_eq("alice's sessions at the end", &none_left, &Vec::new())
}

/// Activity only moves forward: a late-finishing request with an older time cannot make a session
/// look idle sooner.
pub async fn touching_a_session_moves_last_seen_forward_and_never_back(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.touch_session(target.id, at(50)).await.step("touch forward")?;
    let forward = tx.session(target.id).await.step("read after touching forward")?;
    tx.touch_session(target.id, at(20)).await.step("touch backward")?;
    tx.commit().await.step("commit")?;
    let backward = committed_session(store, target.id).await?;

    let expected = Some(Session { last_seen_at: at(50), ..target });
    ensure_eq("session touched forward", &forward, &expected)?;
    ensure_eq("session touched backward", &backward, &expected)
}

/// Other nodes learn of revocations from this list: every session revoked at or after the instant,
/// and none revoked before it or not revoked at all.
pub async fn sessions_revoked_since_lists_revocations_from_that_instant(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let sessions =
        [session(1, alice.id, 0), session(2, alice.id, 0), session(3, alice.id, 0), session(4, alice.id, 0)];
    write_sessions(store, &sessions).await?;

    let mut tx = store.begin().await.step("begin")?;
    for (s, when) in sessions.iter().take(3).zip([100, 200, 300]) {
        tx.revoke_session(alice.id, s.id, at(when), RevokeReason::Logout).await.step("revoke a session")?;
    }
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut since_200 = tx.sessions_revoked_since(at(200)).await.step("list since the second")?;
    let after_all = tx.sessions_revoked_since(at(301)).await.step("list after the last")?;
    tx.commit().await.step("end the read")?;
    since_200.sort();

    let mut expected = vec![sessions[1].id, sessions[2].id];
    expected.sort();
    ensure_eq("sessions revoked since the second revocation", &since_200, &expected)?;
    ensure_eq("sessions revoked after the last revocation", &after_all, &Vec::new())
}

/// After a signing key is suspected compromised, every live bearer session seen since it became active
/// may hold a token it signed: those, of every account, are revoked and their ids returned (to drop
/// cached grants); sessions last seen before the instant, already revoked, past their absolute
/// expiry, or browser sessions (which are never issued access tokens) are left as they were.
pub async fn revoking_sessions_seen_since_an_instant_ends_only_live_bearer_sessions_seen_from_then(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let since = at(100);
    let now = at(500);
    let seen_at_the_instant = Session { last_seen_at: since, ..session(1, alice.id, 0) };
    let seen_after = Session { last_seen_at: at(200), ..session(2, alice.id, 0) };
    let seen_before = Session { last_seen_at: at(99), ..session(3, alice.id, 0) };
    let already_revoked =
        Session { last_seen_at: at(150), revoked_at: Some(at(160)), ..session(4, alice.id, 0) };
    let expired = Session { last_seen_at: at(150), expires_at: now, ..session(5, alice.id, 0) };
    let browser = Session { kind: SessionKind::Cookie, last_seen_at: at(150), ..session(6, alice.id, 0) };
    let bobs = Session { last_seen_at: at(300), ..session(7, bob.id, 0) };
    let all = [
        seen_at_the_instant.clone(),
        seen_after.clone(),
        seen_before.clone(),
        already_revoked.clone(),
        expired.clone(),
        browser.clone(),
        bobs.clone(),
    ];
    write_sessions(store, &all).await?;

    let mut tx = store.begin().await.step("begin")?;
    let mut revoked = tx
        .revoke_sessions_seen_since(since, now, RevokeReason::SigningKeyCompromised)
        .await
        .step("revoke the sessions seen since the instant")?;
    tx.commit().await.step("commit")?;
    revoked.sort();
    let mut reader = store.begin_read().await.step("begin a read")?;
    let mut read = Vec::new();
    for s in &all {
        read.push(reader.session(s.id).await.step("read a session")?);
    }
    let mut announced = reader.sessions_revoked_since(now).await.step("list the revocations")?;
    reader.commit().await.step("end the read")?;
    announced.sort();

    let mut expected = vec![seen_at_the_instant.id, seen_after.id, bobs.id];
    expected.sort();
    let ended = |s: Session| Some(Session { revoked_at: Some(now), ..s });
    ensure_eq("sessions revoked", &revoked, &expected)?;
    ensure_eq("revocations other nodes see", &announced, &expected)?;
    ensure_eq(
        "the sessions afterwards",
        &read,
        &vec![
            ended(seen_at_the_instant),
            ended(seen_after),
            Some(seen_before),
            Some(already_revoked),
            Some(expired),
            Some(browser),
            ended(bobs),
        ],
    )
}

/// A refresh token is spent once; presenting it again reports `AlreadySpent` with its session (so
/// the theft can be answered by revoking that session), also after the spend committed; a token
/// never issued is `Unknown`.
pub async fn a_refresh_token_is_spent_once_then_reported_as_already_spent(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_refresh_token(target.id, &token(1), at(1)).await.step("insert the refresh token")?;
    let first = tx.spend_refresh_token(&token(1), at(2)).await.step("spend the token")?;
    let second = tx.spend_refresh_token(&token(1), at(3)).await.step("spend it again")?;
    let unknown = tx.spend_refresh_token(&token(9), at(3)).await.step("spend an unknown token")?;
    tx.commit().await.step("commit")?;
    let after_commit =
        spend_refresh_token_alone(store, token(1), at(4)).await.step("spend after the commit")?;

    ensure_eq("first spend", &first, &RefreshSpend::Spent(target.id))?;
    ensure_eq("second spend", &second, &RefreshSpend::AlreadySpent(target.id))?;
    ensure_eq("unknown token", &unknown, &RefreshSpend::Unknown)?;
    ensure_eq("spend after the commit", &after_commit, &RefreshSpend::AlreadySpent(target.id))
}

/// Two refreshes racing with one token (a thief and the owner): exactly one is `Spent` and the other
/// `AlreadySpent`, on every engine, so a stolen token cannot be turned into a second token family.
///
/// The first refresh spends the token and is still doing the rest of its work (read the session,
/// record activity, store the next token) when the second arrives. SQLite's single writer makes the
/// second wait for the first to commit; on PostgreSQL at READ COMMITTED the second's `UPDATE` waits
/// on the first one's row lock and then finds the token spent. An implementation that reads
/// `spent_at` and then writes would, on PostgreSQL, see the token unspent and hand out `Spent` twice.
pub async fn two_transactions_spending_one_refresh_token_at_once_get_exactly_one_spent(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;
    let target = session(1, alice.id, 0);
    write_sessions(store, slice::from_ref(&target)).await?;
    let mut tx = store.begin().await.step("begin")?;
    tx.insert_refresh_token(target.id, &token(1), at(1)).await.step("insert the refresh token")?;
    tx.commit().await.step("commit")?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first refresh")?;
    let first_spend = first.spend_refresh_token(&token(1), at(2)).await.step("the first refresh's spend")?;
    let rest_of_first = async move {
        first.session(target.id).await?;
        first.touch_session(target.id, at(2)).await?;
        first.insert_refresh_token(target.id, &token(2), at(2)).await?;
        first.commit().await
    };
    let (second, first_commit) =
        tokio::join!(spend_refresh_token_alone(store, token(1), at(3)), rest_of_first);
    first_commit.step("finish the first refresh")?;
    let second = second.step("the second refresh")?;

    ensure_eq("the first refresh", &first_spend, &RefreshSpend::Spent(target.id))?;
    ensure_eq("the second refresh", &second, &RefreshSpend::AlreadySpent(target.id))
}

// ---------------------------------------------------------------------------------------------
// The keyring
// ---------------------------------------------------------------------------------------------

/// Keys of every purpose and state come back whole, oldest first (ties by id, byte-wise, so both
/// engines list them alike): the wrapped secret and public half byte for byte, the id of the
/// key-encryption key, and every time, set or not.
pub async fn keys_round_trip_oldest_first_with_every_field(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let destroyed = key("sig-0", KeyPurpose::Signing, KeyState::Destroyed, 0);
    let retired =
        StoredKey { kek_id: "kek-0".to_owned(), ..key("sig-1", KeyPurpose::Signing, KeyState::Retired, 10) };
    let active = key("sig-2", KeyPurpose::Signing, KeyState::Active, 20);
    let next = key("sig-3", KeyPurpose::Signing, KeyState::Next, 30);
    let pii = key("pii-a", KeyPurpose::Pii, KeyState::Active, 20);
    // 'Z' sorts before 'b' byte-wise, after it in most locales' collations.
    let audit = key("Z-audit", KeyPurpose::Audit, KeyState::Active, 40);
    let index = key("bi-a", KeyPurpose::BlindIndex, KeyState::Active, 40);

    let mut tx = store.begin().await.step("begin")?;
    let empty = tx.keys().await.step("read the empty keyring")?;
    for k in [&index, &next, &active, &audit, &destroyed, &pii, &retired] {
        tx.insert_key(k).await.step("insert a key")?;
    }
    let in_transaction = tx.keys().await.step("read the keyring in the writing transaction")?;
    tx.commit().await.step("commit")?;
    let keys = committed_keys(store).await?;

    let expected = vec![destroyed, retired, pii, active, next, audit, index];
    ensure_eq("keyring before any key", &empty, &Vec::new())?;
    ensure_eq("keyring seen by the writing transaction", &in_transaction, &expected)?;
    ensure_eq("keyring", &keys, &expected)
}

/// A purpose has at most one `active` and at most one `next` key, and an id names one key: a second
/// active or next key (inserted, or promoted from `next`) or a reused id is
/// `Conflict { entity: "key" }` and leaves the keyring as it was; keys of other purposes, and any
/// number of retired or destroyed keys, sit beside them.
pub async fn a_second_active_or_next_key_of_a_purpose_or_a_reused_id_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let active = key("sig-1", KeyPurpose::Signing, KeyState::Active, 0);
    let next = key("sig-2", KeyPurpose::Signing, KeyState::Next, 1);
    write_keys(store, &[active.clone(), next.clone()]).await?;

    let second_active =
        try_insert_key(store, &key("sig-3", KeyPurpose::Signing, KeyState::Active, 2)).await?;
    let second_next = try_insert_key(store, &key("sig-4", KeyPurpose::Signing, KeyState::Next, 3)).await?;
    let reused_id = try_insert_key(store, &key("sig-1", KeyPurpose::Pii, KeyState::Retired, 4)).await?;
    let mut tx = store.begin().await.step("begin the promotion")?;
    let promoted = tx.transition_key(&next.id, KeyState::Next, KeyState::Active, at(5)).await.map(|_| ());
    tx.rollback().await.step("roll back the promotion")?;
    let beside = [
        key("pii-1", KeyPurpose::Pii, KeyState::Active, 6),
        key("pii-2", KeyPurpose::Pii, KeyState::Next, 7),
        key("sig-5", KeyPurpose::Signing, KeyState::Retired, 8),
        key("sig-6", KeyPurpose::Signing, KeyState::Retired, 9),
        key("sig-7", KeyPurpose::Signing, KeyState::Destroyed, 10),
        key("sig-8", KeyPurpose::Signing, KeyState::Destroyed, 11),
    ];
    write_keys(store, &beside).await?;
    let keys = committed_keys(store).await?;

    ensure_conflict("a second active signing key", second_active, "key")?;
    ensure_conflict("a second next signing key", second_next, "key")?;
    ensure_conflict("a reused id", reused_id, "key")?;
    ensure_conflict("promoting the next key while another is active", promoted, "key")?;
    let mut expected = vec![active, next];
    expected.extend(beside);
    ensure_eq("keyring", &keys, &expected)
}

/// A key moves only from the state it is in (a move from another state, or of an unknown key, says
/// false and changes nothing): becoming active records when, retiring records when, and destroying
/// erases the wrapped secret, keeping an earlier retirement time or recording one.
pub async fn a_key_moves_only_from_the_state_it_is_in_and_destroying_it_erases_its_secret(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let old = key("sig-1", KeyPurpose::Signing, KeyState::Active, 0);
    let new = key("sig-2", KeyPurpose::Signing, KeyState::Next, 1);
    let spare = key("pii-1", KeyPurpose::Pii, KeyState::Next, 2);
    write_keys(store, &[old.clone(), new.clone(), spare.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let wrong_from = tx
        .transition_key(&new.id, KeyState::Active, KeyState::Retired, at(10))
        .await
        .step("move from a wrong state")?;
    let unknown = tx
        .transition_key("unknown", KeyState::Next, KeyState::Active, at(10))
        .await
        .step("move an unknown key")?;
    let unchanged = tx.keys().await.step("read the keyring after the refused moves")?;
    let retired = tx
        .transition_key(&old.id, KeyState::Active, KeyState::Retired, at(10))
        .await
        .step("retire the old key")?;
    let promoted = tx
        .transition_key(&new.id, KeyState::Next, KeyState::Active, at(11))
        .await
        .step("promote the new key")?;
    let promoted_again = tx
        .transition_key(&new.id, KeyState::Next, KeyState::Active, at(12))
        .await
        .step("promote the new key again")?;
    let destroyed = tx
        .transition_key(&old.id, KeyState::Retired, KeyState::Destroyed, at(20))
        .await
        .step("destroy the retired key")?;
    let destroyed_unused = tx
        .transition_key(&spare.id, KeyState::Next, KeyState::Destroyed, at(30))
        .await
        .step("destroy a key that never became active")?;
    tx.commit().await.step("commit")?;
    let keys = committed_keys(store).await?;

    ensure_eq("moving from a state the key is not in", &wrong_from, &false)?;
    ensure_eq("moving an unknown key", &unknown, &false)?;
    ensure_eq("keyring after the refused moves", &unchanged, &vec![old.clone(), new.clone(), spare.clone()])?;
    ensure_eq("retiring the active key", &retired, &true)?;
    ensure_eq("promoting the next key", &promoted, &true)?;
    ensure_eq("promoting it a second time", &promoted_again, &false)?;
    ensure_eq("destroying the retired key", &destroyed, &true)?;
    ensure_eq("destroying an unused key", &destroyed_unused, &true)?;
    let old_after = StoredKey { state: KeyState::Destroyed, wrapped: None, retired_at: Some(at(10)), ..old };
    let new_after = StoredKey { state: KeyState::Active, activated_at: Some(at(11)), ..new };
    let spare_after =
        StoredKey { state: KeyState::Destroyed, wrapped: None, retired_at: Some(at(30)), ..spare };
    ensure_eq("keyring afterwards", &keys, &vec![old_after, new_after, spare_after])
}

/// Nodes starting together each try to create the first key of a purpose; whichever commits first
/// wins and the other gets `Conflict { entity: "key" }`, then reads the winner's key (see
/// `KeyStore::insert_key`). SQLite makes the second wait for the single writer; PostgreSQL makes its
/// insert wait on the first one's uncommitted entry in the one-active index, then fail it.
pub async fn two_nodes_creating_the_first_active_key_of_a_purpose_at_once_agree_on_one(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    open_two_connections(store).await?;
    let winner = key("sig-a", KeyPurpose::Signing, KeyState::Active, 0);
    let mut first = store.begin().await.step("begin the first node's key")?;
    first.insert_key(&winner).await.step("insert the first node's key")?;

    let second = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_key(&key("sig-b", KeyPurpose::Signing, KeyState::Active, 0)).await;
        drop(tx);
        inserted
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    let keys = committed_keys(store).await?;

    first_commit.step("commit the first node's key")?;
    ensure_conflict("the second node's key", second, "key")?;
    ensure_eq("keyring after the race", &keys, &vec![winner])
}

/// Rotates one purpose's keys: retires `active`, then promotes `next`, each move conditional on the
/// state it was read in; false (and nothing done) when `active` was no longer active.
async fn rotate(tx: &mut dyn StoreTx, active: &str, next: &str, at: Timestamp) -> Result<bool, StoreError> {
    if !tx.transition_key(active, KeyState::Active, KeyState::Retired, at).await? {
        return Ok(false);
    }
    tx.transition_key(next, KeyState::Next, KeyState::Active, at).await
}

/// Two nodes rotating one purpose at once: the first retires the active key and promotes the next
/// one; the second's retirement waits for it (SQLite's single writer; PostgreSQL's row lock, after
/// which READ COMMITTED re-checks the state), finds the key no longer active, and does nothing. The
/// keyring ends with exactly one active key, with the first node's times.
pub async fn two_nodes_rotating_one_purpose_at_once_rotate_it_once(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let old = key("sig-1", KeyPurpose::Signing, KeyState::Active, 0);
    let new = key("sig-2", KeyPurpose::Signing, KeyState::Next, 1);
    write_keys(store, &[old.clone(), new.clone()]).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the first rotation")?;
    let first_rotated = rotate(&mut *first, &old.id, &new.id, at(10)).await.step("the first rotation")?;
    let second = async {
        let mut tx = store.begin().await?;
        let rotated = rotate(&mut *tx, &old.id, &new.id, at(20)).await?;
        tx.commit().await?;
        Ok::<bool, StoreError>(rotated)
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    first_commit.step("commit the first rotation")?;
    let second_rotated = second.step("the second rotation")?;
    let keys = committed_keys(store).await?;

    ensure_eq("the first rotation", &first_rotated, &true)?;
    ensure_eq("the second rotation", &second_rotated, &false)?;
    let old_after = StoredKey { state: KeyState::Retired, retired_at: Some(at(10)), ..old };
    let new_after = StoredKey { state: KeyState::Active, activated_at: Some(at(10)), ..new };
    ensure_eq("keyring after the race", &keys, &vec![old_after, new_after])
}

/// A node inserting a fresh active key while another promotes its next key: the insert waits for
/// the promotion to commit and then fails with `Conflict { entity: "key" }`, so the purpose still has
/// one active key.
pub async fn a_key_inserted_as_active_while_another_node_promotes_one_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let old = key("sig-1", KeyPurpose::Signing, KeyState::Active, 0);
    let new = key("sig-2", KeyPurpose::Signing, KeyState::Next, 1);
    write_keys(store, &[old.clone(), new.clone()]).await?;
    open_two_connections(store).await?;

    let mut first = store.begin().await.step("begin the rotation")?;
    let rotated = rotate(&mut *first, &old.id, &new.id, at(10)).await.step("the rotation")?;
    let second = async {
        let mut tx = store.begin().await?;
        let inserted = tx.insert_key(&key("sig-3", KeyPurpose::Signing, KeyState::Active, 20)).await;
        drop(tx);
        inserted
    };
    let (second, first_commit) = tokio::join!(second, first.commit());
    first_commit.step("commit the rotation")?;
    let keys = committed_keys(store).await?;

    ensure_eq("the rotation", &rotated, &true)?;
    ensure_conflict("the inserted active key", second, "key")?;
    let old_after = StoredKey { state: KeyState::Retired, retired_at: Some(at(10)), ..old };
    let new_after = StoredKey { state: KeyState::Active, activated_at: Some(at(10)), ..new };
    ensure_eq("keyring after the race", &keys, &vec![old_after, new_after])
}

/// Rewrapping (moving to another key-encryption key) replaces the id of the key-encryption key and
/// the wrapped secret of a key that still has one, whatever its state, and touches nothing else; a
/// destroyed key has nothing to rewrap, and neither it nor an unknown key changes.
pub async fn rewrapping_a_key_replaces_its_kek_and_secret_but_not_those_of_a_destroyed_key(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let gone = key("pii-0", KeyPurpose::Pii, KeyState::Destroyed, 0);
    let active = key("pii-1", KeyPurpose::Pii, KeyState::Active, 1);
    let retired = key("sig-1", KeyPurpose::Signing, KeyState::Retired, 2);
    write_keys(store, &[gone.clone(), active.clone(), retired.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let active_rewrapped =
        tx.rewrap_key(&active.id, "kek-2", &[0x02, 0x00, 0xfe]).await.step("rewrap the active key")?;
    let retired_rewrapped =
        tx.rewrap_key(&retired.id, "kek-2", &[0x03, 0x00, 0xfd]).await.step("rewrap the retired key")?;
    let gone_rewrapped = tx.rewrap_key(&gone.id, "kek-2", &[0x04]).await.step("rewrap the destroyed key")?;
    let unknown = tx.rewrap_key("unknown", "kek-2", &[0x05]).await.step("rewrap an unknown key")?;
    tx.commit().await.step("commit")?;
    let keys = committed_keys(store).await?;

    ensure_eq("rewrapping the active key", &active_rewrapped, &true)?;
    ensure_eq("rewrapping the retired key", &retired_rewrapped, &true)?;
    ensure_eq("rewrapping the destroyed key", &gone_rewrapped, &false)?;
    ensure_eq("rewrapping an unknown key", &unknown, &false)?;
    let active_after =
        StoredKey { kek_id: "kek-2".to_owned(), wrapped: Some(vec![0x02, 0x00, 0xfe]), ..active };
    let retired_after =
        StoredKey { kek_id: "kek-2".to_owned(), wrapped: Some(vec![0x03, 0x00, 0xfd]), ..retired };
    ensure_eq("keyring afterwards", &keys, &vec![gone, active_after, retired_after])
}

// ---------------------------------------------------------------------------------------------
// Security events
// ---------------------------------------------------------------------------------------------

/// An account's events come back whole (a sealed address byte for byte, with its key), newest first
/// (in recording order within one millisecond, whatever their ids), at most `limit` of them, and
/// without other accounts' events.
pub async fn security_events_round_trip_newest_first_up_to_the_limit(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user_id(1);
    let bare = event(1, SecurityEventKind::LoginFailed, Some(alice), 1);
    let mut full = StoredSecurityEvent {
        ip: Some(sealed("192.0.2.7")),
        pii_key: Some(PII_KEY.to_owned()),
        ..event(2, SecurityEventKind::RefreshTokenReuse, Some(alice), 3)
    };
    full.event.session_id = Some(session_id(1));
    // Recorded first but with the larger id: only the recording order puts it second.
    let same_instant_first = event(8, SecurityEventKind::CsrfRejected, Some(alice), 2);
    let same_instant_second = event(4, SecurityEventKind::LoginFailed, Some(alice), 2);
    let someone_else = event(5, SecurityEventKind::LoginFailed, Some(user_id(2)), 9);
    let anonymous = event(6, SecurityEventKind::LoginFailed, None, 9);

    let mut tx = store.begin().await.step("begin")?;
    for event in [&bare, &full, &same_instant_first, &same_instant_second, &someone_else, &anonymous] {
        tx.insert_security_event(event).await.step("insert an event")?;
    }
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let all = tx.security_events_of(alice, 10).await.step("read alice's events")?;
    let two = tx.security_events_of(alice, 2).await.step("read alice's two newest events")?;
    let none = tx.security_events_of(user_id(3), 10).await.step("read an account without events")?;
    tx.commit().await.step("end the read")?;

    ensure_eq(
        "alice's events",
        &all,
        &vec![full.clone(), same_instant_second.clone(), same_instant_first, bare],
    )?;
    ensure_eq("alice's two newest events", &two, &vec![full, same_instant_second])?;
    ensure_eq("events of an account without any", &none, &Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Sealed personal data
// ---------------------------------------------------------------------------------------------

/// Every byte value, in order.
fn every_byte() -> Vec<u8> {
    (0..=u8::MAX).collect()
}

/// Sealed values are opaque bytes to the store: every byte value (NUL, invalid UTF-8) and a value of
/// several kilobytes come back unchanged from each table that holds them, with the key that sealed
/// them, through each way they are read (a user by id and by index, the session list, a spent
/// token, an account's events).
pub async fn sealed_fields_of_every_table_round_trip_byte_for_byte(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let reversed: Vec<u8> = every_byte().into_iter().rev().collect();
    let alice = StoredUser {
        email: Sealed(every_byte()),
        display_name: Some(Sealed(reversed.clone())),
        ..user(1, "alice@example.com")
    };
    let stored_session = StoredSession {
        ip: Some(Sealed(reversed)),
        user_agent: Some(Sealed(every_byte().repeat(16))),
        pii_key: Some(PII_KEY.to_owned()),
        ..unsealed(session(1, alice.id, 0))
    };
    let invite = StoredOneTimeToken {
        email: Some(Sealed(every_byte())),
        pii_key: Some(PII_KEY.to_owned()),
        ..one_time(1, OneTimePurpose::Invite, None, 0)
    };
    let stored_event = StoredSecurityEvent {
        ip: Some(Sealed(every_byte())),
        pii_key: Some(PII_KEY.to_owned()),
        ..event(1, SecurityEventKind::LoginFailed, Some(alice.id), 1)
    };

    let mut tx = store.begin().await.step("begin")?;
    tx.insert_user(&alice).await.step("insert the user")?;
    tx.insert_session(&stored_session, None).await.step("insert the session")?;
    tx.insert_one_time_token(&invite).await.step("insert the invite")?;
    tx.insert_security_event(&stored_event).await.step("insert the event")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin().await.step("begin the reads")?;
    let by_id = tx.user_by_id(alice.id).await.step("read the user by id")?;
    let by_index = tx.user_by_email_index(&alice.email_index).await.step("look up the user by index")?;
    let sessions = tx.sessions_of(alice.id, at(1)).await.step("list the sessions")?;
    let spent = tx
        .spend_one_time_token(&invite.token.hash, invite.token.purpose, at(1))
        .await
        .step("spend the invite")?;
    let events = tx.security_events_of(alice.id, 10).await.step("read the events")?;
    tx.rollback().await.step("roll back")?;

    ensure_eq("user by id", &by_id, &Some(alice.clone()))?;
    ensure_eq("user by index", &by_index, &Some(alice))?;
    ensure_eq("session list", &sessions, &vec![stored_session])?;
    ensure_eq("spent invite", &spent, &Some(invite))?;
    ensure_eq("events", &events, &vec![stored_event])
}

/// Rows in the four personal-data tables, sealed under `pii-0`, `pii-1` and `pii-2`, rows without
/// personal data (no key), and a TOTP seed, as [`write_sealed_rows`] writes them.
struct SealedRows {
    users: [StoredUser; 3],
    sessions: [StoredSession; 4],
    tokens: [StoredOneTimeToken; 3],
    events: [StoredSecurityEvent; 4],
    totp: StoredTotpDevice,
}

/// Writes [`SealedRows`] and returns them. Under `pii-1`: one user, two sessions, one token, one
/// event, one TOTP seed; under `pii-2`: one user, session, token and event; under `pii-0`: one user
/// and one event; without a key: one session, one token, one event.
async fn write_sealed_rows(store: &dyn Store) -> Result<SealedRows, Failure> {
    let under = |key: &str| Some(key.to_owned());
    let alice = user(1, "alice@example.com");
    let bob = StoredUser {
        display_name: Some(sealed("Bob")),
        pii_key: "pii-2".to_owned(),
        ..user(2, "bob@example.com")
    };
    let carol = StoredUser {
        display_name: Some(sealed("Carol")),
        pii_key: "pii-0".to_owned(),
        ..user(3, "carol@example.com")
    };
    let sessions = [
        StoredSession {
            ip: Some(sealed("192.0.2.1")),
            user_agent: Some(sealed("agent 1")),
            pii_key: under("pii-1"),
            ..unsealed(session(1, alice.id, 0))
        },
        unsealed(session(2, alice.id, 0)),
        StoredSession {
            ip: Some(sealed("192.0.2.3")),
            pii_key: under("pii-2"),
            ..unsealed(session(3, alice.id, 0))
        },
        StoredSession {
            user_agent: Some(sealed("agent 4")),
            pii_key: under("pii-1"),
            ..unsealed(session(4, bob.id, 0))
        },
    ];
    let tokens = [
        StoredOneTimeToken {
            email: Some(sealed("invitee1@example.com")),
            pii_key: under("pii-1"),
            ..one_time(1, OneTimePurpose::Invite, None, 0)
        },
        one_time(2, OneTimePurpose::PasswordReset, Some(alice.id), 0),
        StoredOneTimeToken {
            email: Some(sealed("invitee3@example.com")),
            pii_key: under("pii-2"),
            ..one_time(3, OneTimePurpose::Invite, None, 0)
        },
    ];
    let sealed_event = |seed: u8, key: &str| StoredSecurityEvent {
        ip: Some(sealed(&format!("198.51.100.{seed}"))),
        pii_key: under(key),
        ..event(seed, SecurityEventKind::LoginFailed, Some(alice.id), i64::from(seed))
    };
    let events = [
        sealed_event(1, "pii-1"),
        event(2, SecurityEventKind::LoginFailed, Some(alice.id), 2),
        sealed_event(3, "pii-2"),
        sealed_event(4, "pii-0"),
    ];
    let totp =
        StoredTotpDevice { confirmed_at: Some(at(1)), last_step: Some(3), ..mfa::totp(1, alice.id, 0) };
    let rows = SealedRows { users: [alice, bob, carol], sessions, tokens, events, totp };

    let mut tx = store.begin().await.step("begin a write")?;
    for u in &rows.users {
        tx.insert_user(u).await.step("insert a user")?;
    }
    for s in &rows.sessions {
        tx.insert_session(s, None).await.step("insert a session")?;
    }
    for t in &rows.tokens {
        tx.insert_one_time_token(t).await.step("insert a one-time token")?;
    }
    for e in &rows.events {
        tx.insert_security_event(e).await.step("insert a security event")?;
    }
    tx.insert_totp_device(&rows.totp).await.step("insert a totp device")?;
    tx.commit().await.step("commit the sealed rows")?;
    Ok(rows)
}

/// The re-encryption job's view of a user: its id, key and sealed columns.
fn user_row(u: &StoredUser) -> PiiRow {
    PiiRow {
        id: u.id.to_string(),
        key: u.pii_key.clone(),
        fields: vec![Some(u.email.clone()), u.display_name.clone()],
    }
}

/// The re-encryption job's view of a session (which must have a key).
fn session_row(s: &StoredSession) -> PiiRow {
    PiiRow {
        id: s.session.id.to_string(),
        key: s.pii_key.clone().unwrap_or_default(),
        fields: vec![s.ip.clone(), s.user_agent.clone()],
    }
}

/// The re-encryption job's view of a one-time token (which must have a key): its id is the hash in
/// lowercase hex.
fn token_row(t: &StoredOneTimeToken) -> PiiRow {
    PiiRow {
        id: t.token.hash.to_hex(),
        key: t.pii_key.clone().unwrap_or_default(),
        fields: vec![t.email.clone()],
    }
}

/// The re-encryption job's view of a security event (which must have a key).
fn event_row(e: &StoredSecurityEvent) -> PiiRow {
    PiiRow {
        id: e.event.id.to_string(),
        key: e.pii_key.clone().unwrap_or_default(),
        fields: vec![e.ip.clone()],
    }
}

/// The rows of `table` not sealed under `key`, up to `limit`, in a read transaction of their own.
async fn committed_pii_rows_not_under(
    store: &dyn Store,
    table: PiiTable,
    key: &str,
    limit: u32,
) -> Result<Vec<PiiRow>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let rows = reader.pii_rows_not_under(table, key, limit).await.step("find rows under other keys")?;
    reader.commit().await.step("end the read")?;
    Ok(rows)
}

/// The re-encryption job finds, in each of the four tables, the rows sealed under any key but the one
/// asked for (in id order, byte-wise, so both engines hand out the same batches), with their id, key
/// and sealed columns in [`PiiTable::columns`] order; rows without personal data (no key) are never
/// found, and `limit` bounds the batch.
pub async fn rows_sealed_under_other_keys_are_found_in_every_table_up_to_the_limit(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let SealedRows { users, sessions, tokens, events, .. } = write_sealed_rows(store).await?;

    let mut found = Vec::new();
    for (key, limit) in [("pii-2", 10), ("pii-1", 10), ("pii-2", 1)] {
        // API keys' and TOTP seeds' sealed columns have their own checks
        // (`an_api_keys_last_ip_is_found_resealed_and_counted`,
        // `a_totp_seed_is_found_resealed_and_counted_like_personal_data`).
        for table in [PiiTable::Users, PiiTable::Sessions, PiiTable::OneTimeTokens, PiiTable::SecurityEvents]
        {
            found.push(committed_pii_rows_not_under(store, table, key, limit).await?);
        }
    }
    let none = committed_pii_rows_not_under(store, PiiTable::Users, "pii-2", 0).await?;

    let expected = vec![
        // Not under pii-2.
        vec![user_row(&users[0]), user_row(&users[2])],
        vec![session_row(&sessions[0]), session_row(&sessions[3])],
        vec![token_row(&tokens[0])],
        vec![event_row(&events[0]), event_row(&events[3])],
        // Not under pii-1.
        vec![user_row(&users[1]), user_row(&users[2])],
        vec![session_row(&sessions[2])],
        vec![token_row(&tokens[2])],
        vec![event_row(&events[2]), event_row(&events[3])],
        // Not under pii-2, one at a time.
        vec![user_row(&users[0])],
        vec![session_row(&sessions[0])],
        vec![token_row(&tokens[0])],
        vec![event_row(&events[0])],
    ];
    ensure_eq("rows under other keys (users, sessions, tokens, events per key)", &found, &expected)?;
    ensure_eq("a batch of none", &none, &Vec::new())
}

/// The new sealed form of a field: distinct bytes, so a reseal shows.
fn resealed(field: &Option<Sealed>) -> Option<Sealed> {
    field.as_ref().map(|s| Sealed([b"re:".as_slice(), &s.0].concat()))
}

/// Resealing replaces a row's sealed columns and its key, in every table, and nothing else about the
/// row; but only while the row is still under the key it was read under: a second reseal from the
/// stale read (someone resealed or rewrote the row meanwhile) says false and changes nothing.
pub async fn a_row_is_resealed_only_while_it_is_still_under_the_key_it_was_read_under(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let SealedRows { users, sessions, tokens, events, totp } = write_sealed_rows(store).await?;

    let mut tx = store.begin().await.step("begin the reseal")?;
    let mut batches = Vec::new();
    let mut resealed_all = Vec::new();
    for table in PiiTable::ALL {
        let rows = tx.pii_rows_not_under(table, "pii-2", 10).await.step("read a batch")?;
        for row in &rows {
            let new = PiiRow { fields: row.fields.iter().map(resealed).collect(), ..row.clone() };
            resealed_all.push(tx.reseal_pii_row(table, &new, "pii-2").await.step("reseal a row")?);
        }
        batches.push((table, rows));
    }
    tx.commit().await.step("commit the reseal")?;
    let mut tx = store.begin().await.step("begin the stale reseal")?;
    let mut stale = Vec::new();
    for (table, rows) in &batches {
        for row in rows {
            let other =
                PiiRow { fields: row.fields.iter().map(|_| Some(sealed("stale"))).collect(), ..row.clone() };
            stale.push(tx.reseal_pii_row(*table, &other, "pii-3").await.step("reseal from a stale read")?);
        }
    }
    tx.commit().await.step("commit the stale reseal")?;
    let mut left = Vec::new();
    for table in PiiTable::ALL {
        left.extend(committed_pii_rows_not_under(store, table, "pii-2", 10).await?);
    }
    let mut tx = store.begin().await.step("begin the reads")?;
    let alice = tx.user_by_id(users[0].id).await.step("read alice")?;
    let carol = tx.user_by_id(users[2].id).await.step("read carol")?;
    let alices_sessions = tx.sessions_of(users[0].id, at(1)).await.step("list alice's sessions")?;
    let bobs_sessions = tx.sessions_of(users[1].id, at(1)).await.step("list bob's sessions")?;
    let invite = tx
        .spend_one_time_token(&tokens[0].token.hash, tokens[0].token.purpose, at(1))
        .await
        .step("spend the invite")?;
    let alices_events = tx.security_events_of(users[0].id, 10).await.step("read alice's events")?;
    let alices_devices = tx.totp_devices_of(users[0].id).await.step("list alice's totp devices")?;
    tx.rollback().await.step("roll back the reads")?;

    ensure_eq("rows resealed", &resealed_all, &vec![true; 8])?;
    ensure_eq("rows resealed from a stale read", &stale, &vec![false; 8])?;
    ensure_eq("rows left under other keys", &left, &Vec::new())?;
    let moved_user = |u: &StoredUser| StoredUser {
        email: Sealed([b"re:".as_slice(), &u.email.0].concat()),
        display_name: resealed(&u.display_name),
        pii_key: "pii-2".to_owned(),
        ..u.clone()
    };
    ensure_eq("alice", &alice, &Some(moved_user(&users[0])))?;
    ensure_eq("carol", &carol, &Some(moved_user(&users[2])))?;
    let moved_session = |s: &StoredSession| StoredSession {
        ip: resealed(&s.ip),
        user_agent: resealed(&s.user_agent),
        pii_key: Some("pii-2".to_owned()),
        ..s.clone()
    };
    // Alice's sessions were all created at once: listed by id, descending.
    ensure_eq(
        "alice's sessions",
        &alices_sessions,
        &vec![sessions[2].clone(), sessions[1].clone(), moved_session(&sessions[0])],
    )?;
    ensure_eq("bob's sessions", &bobs_sessions, &vec![moved_session(&sessions[3])])?;
    let moved_invite = StoredOneTimeToken {
        email: resealed(&tokens[0].email),
        pii_key: Some("pii-2".to_owned()),
        ..tokens[0].clone()
    };
    ensure_eq("the invite", &invite, &Some(moved_invite))?;
    let moved_event = |e: &StoredSecurityEvent| StoredSecurityEvent {
        ip: resealed(&e.ip),
        pii_key: Some("pii-2".to_owned()),
        ..e.clone()
    };
    ensure_eq(
        "alice's events",
        &alices_events,
        &vec![moved_event(&events[3]), events[2].clone(), events[1].clone(), moved_event(&events[0])],
    )?;
    let moved_totp = StoredTotpDevice {
        secret: Sealed([b"re:".as_slice(), &totp.secret.0].concat()),
        pii_key: "pii-2".to_owned(),
        ..totp
    };
    ensure_eq("alice's totp devices", &alices_devices, &vec![moved_totp])
}

/// The count that tells when a retired key seals nothing any more adds up the rows of every table
/// sealed under it (TOTP seeds included), and rows without a key count for none.
pub async fn rows_under_a_key_are_counted_over_all_four_tables(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_sealed_rows(store).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let mut counts = Vec::new();
    for key in ["pii-0", "pii-1", "pii-2", "pii-9"] {
        counts.push(tx.count_pii_rows_under(key).await.step("count the rows under a key")?);
    }
    tx.commit().await.step("end the read")?;

    ensure_eq("rows under pii-0, pii-1, pii-2 and pii-9", &counts, &vec![2, 6, 4, 0])
}

/// The blind-index job finds the users indexed under any key but the current one (whole, in id
/// order, up to the limit), counts users per key, and moves a user to a new index only while it is
/// still indexed with the key it was read under; afterwards the new index finds the account and the
/// old one does not.
pub async fn a_user_is_reindexed_only_from_the_key_it_was_indexed_with(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = user(1, "alice@example.com");
    let bob = StoredUser { index_key: "bi-2".to_owned(), ..user(2, "bob@example.com") };
    let carol = user(3, "carol@example.com");
    write_users(store, &[alice.clone(), bob.clone(), carol.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let not_indexed = tx.users_not_indexed_under("bi-2", 10).await.step("find users under other keys")?;
    let first = tx.users_not_indexed_under("bi-2", 1).await.step("find one user under other keys")?;
    let before = [
        tx.count_users_indexed_under(INDEX_KEY).await.step("count under the old key")?,
        tx.count_users_indexed_under("bi-2").await.step("count under the new key")?,
    ];
    let moved = tx.reindex_user(alice.id, INDEX_KEY, "bi-2", &index(11)).await.step("reindex alice")?;
    let stale = tx.reindex_user(alice.id, INDEX_KEY, "bi-2", &index(12)).await.step("reindex alice again")?;
    let wrong_key =
        tx.reindex_user(carol.id, "bi-0", "bi-2", &index(13)).await.step("reindex from a wrong key")?;
    let unknown =
        tx.reindex_user(user_id(9), INDEX_KEY, "bi-2", &index(14)).await.step("reindex an unknown user")?;
    tx.commit().await.step("commit")?;
    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_new = tx.user_by_email_index(&index(11)).await.step("look up by the new index")?;
    let by_old = tx.user_by_email_index(&index(1)).await.step("look up by the old index")?;
    let left = tx.users_not_indexed_under("bi-2", 10).await.step("find users left under other keys")?;
    let after = [
        tx.count_users_indexed_under(INDEX_KEY).await.step("count under the old key")?,
        tx.count_users_indexed_under("bi-2").await.step("count under the new key")?,
    ];
    tx.commit().await.step("end the read")?;

    ensure_eq("users under other keys", &not_indexed, &vec![alice.clone(), carol.clone()])?;
    ensure_eq("the first user under other keys", &first, &vec![alice.clone()])?;
    ensure_eq("users under the old and new keys before", &before, &[2, 1])?;
    ensure_eq("reindexing alice", &moved, &true)?;
    ensure_eq("reindexing alice from a stale read", &stale, &false)?;
    ensure_eq("reindexing from a key the user is not under", &wrong_key, &false)?;
    ensure_eq("reindexing an unknown user", &unknown, &false)?;
    let alice_after = StoredUser { email_index: index(11), index_key: "bi-2".to_owned(), ..alice };
    ensure_eq("user by the new index", &by_new, &Some(alice_after))?;
    ensure_eq("user by the old index", &by_old, &None)?;
    ensure_eq("users left under other keys", &left, &vec![carol])?;
    ensure_eq("users under the old and new keys after", &after, &[1, 2])
}

/// A new index that another account already holds (two addresses that the new key folds alike, or a
/// bug) is `Conflict { entity: "user" }`, and neither account changes.
pub async fn reindexing_a_user_onto_another_accounts_index_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let alice = StoredUser { index_key: "bi-2".to_owned(), ..user(1, "alice@example.com") };
    let bob = user(2, "bob@example.com");
    write_users(store, &[alice.clone(), bob.clone()]).await?;

    let mut tx = store.begin().await.step("begin")?;
    let taken = tx.reindex_user(bob.id, INDEX_KEY, "bi-2", &alice.email_index).await.map(|_| ());
    tx.rollback().await.step("roll back after the conflict")?;
    let alice_after = committed_user(store, alice.id).await?;
    let bob_after = committed_user(store, bob.id).await?;

    ensure_conflict("reindexing onto alice's index", taken, "user")?;
    ensure_eq("alice", &alice_after, &Some(alice))?;
    ensure_eq("bob", &bob_after, &Some(bob))
}

// ---------------------------------------------------------------------------------------------
// Organizations and memberships
// ---------------------------------------------------------------------------------------------

/// Every field of an organization comes back as written, by id and by slug; unknown ones are `None`.
/// A taken slug is `Conflict { entity: "organization" }` and the first organization is left alone.
pub async fn an_organization_round_trips_by_id_and_by_slug_and_a_taken_slug_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let acme = Organization { name: display_name("Acme Société")?, ..organization(1, "acme")? };
    write_organizations(store, slice::from_ref(&acme)).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.organization(acme.id).await.step("read by id")?;
    let by_slug = tx.organization_by_slug(&acme.slug).await.step("read by slug")?;
    let unknown_id = tx.organization(organization_id(2)).await.step("read an unknown id")?;
    let unknown_slug = tx.organization_by_slug(&slug("globex")?).await.step("read an unknown slug")?;
    tx.commit().await.step("end the read")?;

    let mut tx = store.begin().await.step("begin the second insert")?;
    let taken = tx.insert_organization(&organization(3, "acme")?).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let after = committed_organization(store, acme.id).await?;
    let intruder = committed_organization(store, organization_id(3)).await?;

    ensure_eq("organization by id", &by_id, &Some(acme.clone()))?;
    ensure_eq("organization by slug", &by_slug, &Some(acme.clone()))?;
    ensure_eq("unknown id", &unknown_id, &None)?;
    ensure_eq("unknown slug", &unknown_slug, &None)?;
    ensure_conflict("an organization with a taken slug", taken, "organization")?;
    ensure_eq("the first organization", &after, &Some(acme))?;
    ensure_eq("the second organization", &intruder, &None)
}

/// Keyset pagination of organizations: pages in id (byte) order that neither skip nor repeat,
/// whatever order they were created in.
pub async fn organizations_are_listed_a_page_at_a_time_in_id_order(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let mut organizations = Vec::new();
    for (n, seed) in [0xa1_u8, 0x3c, 0xf0, 0x0f, 0x55].into_iter().enumerate() {
        organizations.push(organization(seed, &format!("org-{n}"))?);
    }
    write_organizations(store, &organizations).await?;
    let mut ids: Vec<OrganizationId> = organizations.iter().map(|o| o.id).collect();
    ids.sort_by_key(|id| id.to_string());

    let mut tx = store.begin_read().await.step("begin a read")?;
    let first = tx.organizations(None, 2).await.step("first page")?;
    let second = tx.organizations(first.last().map(|o| o.id), 2).await.step("second page")?;
    let third = tx.organizations(second.last().map(|o| o.id), 2).await.step("third page")?;
    let after_last = tx.organizations(ids.last().copied(), 10).await.step("after the last")?;
    tx.commit().await.step("end the read")?;

    let paged: Vec<OrganizationId> = first.iter().chain(&second).chain(&third).map(|o| o.id).collect();
    ensure_eq("page sizes", &(first.len(), second.len(), third.len()), &(2, 2, 1))?;
    ensure_eq("every organization once, in id order", &paged, &ids)?;
    let whole = first.iter().chain(&second).chain(&third).find(|o| o.id == organizations[2].id);
    ensure_eq("a listed organization has every field", &whole, &Some(&organizations[2]))?;
    ensure_eq("nothing after the last", &after_last.len(), &0)
}

/// A rename lands on the one organization named and changes nothing but its name; a missing one is
/// reported as false.
pub async fn renaming_an_organization_changes_only_its_name_and_reports_a_missing_one(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let acme = organization(1, "acme")?;
    let globex = organization(2, "globex")?;
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let new_name = display_name("Acme Europe")?;

    let mut tx = store.begin().await.step("begin")?;
    let renamed = tx.rename_organization(acme.id, &new_name).await.step("rename")?;
    let missing = tx.rename_organization(organization_id(9), &new_name).await.step("rename a stranger")?;
    tx.commit().await.step("commit")?;

    ensure_eq("renames found their rows", &(renamed, missing), &(true, false))?;
    ensure_eq(
        "the renamed organization",
        &committed_organization(store, acme.id).await?,
        &Some(Organization { name: new_name, ..acme }),
    )?;
    ensure_eq("the other organization", &committed_organization(store, globex.id).await?, &Some(globex))?;
    ensure_eq("no organization was created", &committed_organization(store, organization_id(9)).await?, &None)
}

/// Deleting an organization removes it and every membership in it (and none elsewhere); deleting it
/// again reports false.
pub async fn deleting_an_organization_takes_its_memberships_and_reports_false_the_second_time(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (doomed, kept) = (organization(1, "doomed")?, organization(2, "kept")?);
    write_organizations(store, &[doomed.clone(), kept.clone()]).await?;
    let (alice, bob) = (user(1, "alice@example.com"), user(2, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let mut tx = store.begin().await.step("begin the memberships")?;
    tx.set_membership(doomed.id, alice.id, BuiltinRole::Owner, at(1)).await.step("alice joins doomed")?;
    tx.set_membership(doomed.id, bob.id, BuiltinRole::Member, at(1)).await.step("bob joins doomed")?;
    tx.set_membership(kept.id, alice.id, BuiltinRole::Admin, at(1)).await.step("alice joins kept")?;
    tx.commit().await.step("commit the memberships")?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_organization(doomed.id).await.step("delete")?;
    let again = tx.delete_organization(doomed.id).await.step("delete again")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let by_id = tx.organization(doomed.id).await.step("read the deleted one by id")?;
    let by_slug = tx.organization_by_slug(&doomed.slug).await.step("read the deleted one by slug")?;
    let members = tx.members_of(doomed.id, None, 10).await.step("list its members")?;
    let bobs = tx.membership(doomed.id, bob.id).await.step("read bob's membership")?;
    let alices = tx.memberships_of(alice.id).await.step("list alice's memberships")?;
    let listed = tx.organizations(None, 10).await.step("list the organizations")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted once", &(deleted, again), &(true, false))?;
    ensure_eq("by id", &by_id, &None)?;
    ensure_eq("by slug", &by_slug, &None)?;
    ensure_eq("its members", &members, &Vec::new())?;
    ensure_eq("bob's membership in it", &bobs, &None)?;
    ensure_eq("alice's memberships", &alices, &vec![(kept.id, BuiltinRole::Admin)])?;
    ensure_eq("the organizations left", &listed, &vec![kept])
}

/// `set_membership` inserts, then changes the role of an existing member (no second row);
/// `memberships_of` lists an account's organizations in id order, `members_of` pages an
/// organization's members in user id order without skipping or repeating, and a membership is
/// removed once.
pub async fn a_membership_is_set_changed_listed_a_page_at_a_time_and_removed_once(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let mut organizations = Vec::new();
    for (n, seed) in [0xc3_u8, 0x2a, 0x71].into_iter().enumerate() {
        organizations.push(organization(seed, &format!("org-{n}"))?);
    }
    write_organizations(store, &organizations).await?;
    let acme = organizations[0].id;
    let users: Vec<StoredUser> =
        [0xe1_u8, 0x1e, 0x88].iter().map(|&n| user(n, &format!("u{n}@example.com"))).collect();
    write_users(store, &users).await?;
    let alice = users[0].id;

    let mut tx = store.begin().await.step("begin")?;
    tx.set_membership(acme, alice, BuiltinRole::Member, at(1)).await.step("alice joins")?;
    let joined = tx.membership(acme, alice).await.step("read alice's membership")?;
    tx.set_membership(acme, alice, BuiltinRole::Admin, at(2)).await.step("promote alice")?;
    let promoted = tx.membership(acme, alice).await.step("read it again")?;
    for other in &organizations[1..] {
        tx.set_membership(other.id, alice, BuiltinRole::Auditor, at(3)).await.step("alice joins another")?;
    }
    for member in &users[1..] {
        tx.set_membership(acme, member.id, BuiltinRole::Member, at(4)).await.step("another joins acme")?;
    }
    let outsider = tx.membership(organizations[1].id, users[1].id).await.step("read a non-member")?;
    tx.commit().await.step("commit")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_alice = tx.memberships_of(alice).await.step("list alice's memberships")?;
    let first = tx.members_of(acme, None, 2).await.step("first page of members")?;
    let second = tx.members_of(acme, first.last().map(|m| m.0), 2).await.step("second page")?;
    let third = tx.members_of(acme, second.last().map(|m| m.0), 2).await.step("past the end")?;
    let of_nobody = tx.memberships_of(user_id(9)).await.step("list a stranger's memberships")?;
    tx.commit().await.step("end the read")?;

    let mut tx = store.begin().await.step("begin the removal")?;
    let removed = tx.remove_membership(acme, alice).await.step("remove alice")?;
    let again = tx.remove_membership(acme, alice).await.step("remove alice again")?;
    let stranger = tx.remove_membership(acme, user_id(9)).await.step("remove a stranger")?;
    let after = tx.membership(acme, alice).await.step("read alice's membership after")?;
    tx.commit().await.step("commit the removal")?;

    ensure_eq("the role as joined", &joined, &Some(BuiltinRole::Member))?;
    ensure_eq("the role after the change", &promoted, &Some(BuiltinRole::Admin))?;
    ensure_eq("a non-member's role", &outsider, &None)?;
    let mut expected: Vec<(OrganizationId, BuiltinRole)> = vec![(acme, BuiltinRole::Admin)];
    expected.extend(organizations[1..].iter().map(|o| (o.id, BuiltinRole::Auditor)));
    expected.sort_by_key(|(id, _)| id.to_string());
    ensure_eq("alice's memberships, in organization id order", &of_alice, &expected)?;
    let mut members: Vec<(UserId, BuiltinRole)> = vec![(alice, BuiltinRole::Admin)];
    members.extend(users[1..].iter().map(|u| (u.id, BuiltinRole::Member)));
    members.sort_by_key(|(id, _)| id.to_string());
    let paged: Vec<(UserId, BuiltinRole)> = first.iter().chain(&second).copied().collect();
    ensure_eq("page sizes", &(first.len(), second.len(), third.len()), &(2, 1, 0))?;
    ensure_eq("every member once, in user id order", &paged, &members)?;
    ensure_eq("a stranger's memberships", &of_nobody, &Vec::new())?;
    ensure_eq("removed once", &(removed, again, stranger), &(true, false, false))?;
    ensure_eq("alice's membership after the removal", &after, &None)?;
    let of_alice_after = {
        let mut tx = store.begin_read().await.step("begin a read")?;
        let found = tx.memberships_of(alice).await.step("list alice's memberships after")?;
        tx.commit().await.step("end the read")?;
        found
    };
    ensure_eq("alice's other memberships stay", &of_alice_after.len(), &2)
}

/// A membership needs both sides: a missing organization or account is
/// `Conflict { entity: "membership" }`, and the transaction (with what it wrote before) then refuses
/// to commit, as after any failed statement.
pub async fn a_membership_in_a_missing_organization_or_of_a_missing_account_is_a_conflict(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let alice = user(1, "alice@example.com");
    write_users(store, slice::from_ref(&alice)).await?;

    for (what, organization, member) in
        [("a missing organization", organization_id(9), alice.id), ("a missing account", acme.id, user_id(9))]
    {
        let mut tx = store.begin().await.step("begin")?;
        tx.set_membership(globex.id, alice.id, BuiltinRole::Member, at(1))
            .await
            .step("a valid membership before the failure")?;
        let refused = tx.set_membership(organization, member, BuiltinRole::Owner, at(2)).await;
        let commit = tx.commit().await;
        ensure_conflict(&format!("a membership in {what}"), refused, "membership")?;
        match commit {
            Err(StoreError::Database(_)) => {}
            other => {
                return Err(Failure(format!(
                    "commit after a membership in {what}: expected Database error, got {other:?}"
                )));
            }
        }
    }

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_alice = tx.memberships_of(alice.id).await.step("list alice's memberships")?;
    let members = tx.members_of(acme.id, None, 10).await.step("list acme's members")?;
    let phantom = tx.members_of(organization_id(9), None, 10).await.step("list a stranger's members")?;
    tx.commit().await.step("end the read")?;
    ensure_eq("alice's memberships (nothing committed)", &of_alice, &Vec::new())?;
    ensure_eq("acme's members", &members, &Vec::new())?;
    ensure_eq("a missing organization's members", &phantom, &Vec::new())
}

/// The last-owner guard's count: active accounts with that role in that organization only; not a
/// disabled or locked member, not another role, not the same role elsewhere, and not the account's
/// own instance-wide role.
pub async fn only_active_accounts_holding_the_role_in_that_organization_are_counted(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let owner = user(1, "owner@example.com");
    let disabled = user(2, "disabled@example.com");
    let locked = StoredUser { status: UserStatus::Locked, ..user(3, "locked@example.com") };
    let admin = StoredUser { role: BuiltinRole::Owner, ..user(4, "admin@example.com") };
    let elsewhere = user(5, "elsewhere@example.com");
    write_users(store, &[owner.clone(), disabled.clone(), locked.clone(), admin.clone(), elsewhere.clone()])
        .await?;
    let mut tx = store.begin().await.step("begin the memberships")?;
    for (org, member, role) in [
        (acme.id, owner.id, BuiltinRole::Owner),
        (acme.id, disabled.id, BuiltinRole::Owner),
        (acme.id, locked.id, BuiltinRole::Owner),
        (acme.id, admin.id, BuiltinRole::Admin),
        (globex.id, elsewhere.id, BuiltinRole::Owner),
        (globex.id, owner.id, BuiltinRole::Member),
    ] {
        tx.set_membership(org, member, role, at(1)).await.step("set a membership")?;
    }
    tx.commit().await.step("commit the memberships")?;

    let mut tx = store.begin().await.step("begin")?;
    let before = tx.count_active_members_with_role(acme.id, BuiltinRole::Owner).await.step("count")?;
    tx.set_user_status(disabled.id, UserStatus::Disabled, at(2)).await.step("disable a member")?;
    let owners = tx.count_active_members_with_role(acme.id, BuiltinRole::Owner).await.step("count owners")?;
    let admins = tx.count_active_members_with_role(acme.id, BuiltinRole::Admin).await.step("count admins")?;
    let auditors =
        tx.count_active_members_with_role(acme.id, BuiltinRole::Auditor).await.step("count auditors")?;
    let globex_owners =
        tx.count_active_members_with_role(globex.id, BuiltinRole::Owner).await.step("count globex owners")?;
    let globex_members = tx
        .count_active_members_with_role(globex.id, BuiltinRole::Member)
        .await
        .step("count globex members")?;
    let nowhere = tx
        .count_active_members_with_role(organization_id(9), BuiltinRole::Owner)
        .await
        .step("count in a missing organization")?;
    tx.commit().await.step("commit")?;

    ensure_eq("active owners of acme before the disable", &before, &2)?;
    ensure_eq("active owners of acme", &owners, &1)?;
    ensure_eq("active admins of acme", &admins, &1)?;
    ensure_eq("active auditors of acme", &auditors, &0)?;
    ensure_eq("active owners and members of globex", &(globex_owners, globex_members), &(1, 1))?;
    ensure_eq("owners of a missing organization", &nowhere, &0)
}

/// Deleting an account ends every membership it had, and only its own.
pub async fn deleting_an_account_ends_its_memberships(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let (doomed, kept) = (user(1, "doomed@example.com"), user(2, "kept@example.com"));
    write_users(store, &[doomed.clone(), kept.clone()]).await?;
    let mut tx = store.begin().await.step("begin the memberships")?;
    tx.set_membership(acme.id, doomed.id, BuiltinRole::Owner, at(1)).await.step("doomed joins acme")?;
    tx.set_membership(globex.id, doomed.id, BuiltinRole::Member, at(1)).await.step("doomed joins globex")?;
    tx.set_membership(acme.id, kept.id, BuiltinRole::Admin, at(1)).await.step("kept joins acme")?;
    tx.commit().await.step("commit the memberships")?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_user(doomed.id, at(5)).await.step("delete the account")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_doomed = tx.memberships_of(doomed.id).await.step("list the deleted account's memberships")?;
    let in_globex = tx.membership(globex.id, doomed.id).await.step("read its globex membership")?;
    let acme_members = tx.members_of(acme.id, None, 10).await.step("list acme's members")?;
    let globex_members = tx.members_of(globex.id, None, 10).await.step("list globex's members")?;
    let owners = tx.count_active_members_with_role(acme.id, BuiltinRole::Owner).await.step("count owners")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("its memberships", &of_doomed, &Vec::new())?;
    ensure_eq("its globex membership", &in_globex, &None)?;
    ensure_eq("acme's members", &acme_members, &vec![(kept.id, BuiltinRole::Admin)])?;
    ensure_eq("globex's members", &globex_members, &Vec::new())?;
    ensure_eq("acme's active owners", &owners, &0)
}

// ---------------------------------------------------------------------------------------------
// Custom roles and their holders
// ---------------------------------------------------------------------------------------------

/// Every field of a role comes back as written, the permissions in their order (wildcards and an
/// empty list included), by its organization and id; another organization's id for it, or an
/// unknown id, is `None`.
pub async fn a_role_round_trips_every_field_by_organization_and_id_and_is_none_elsewhere(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = CustomRole {
        permissions: permissions(&["users:read", "invoices:*", "*:*", "*:read", "api_keys:write-all"])?,
        created_at: at(5),
        updated_at: at(7),
        ..custom_role(1, acme.id, "billing")?
    };
    let empty = CustomRole { permissions: Vec::new(), ..custom_role(2, acme.id, "nothing-yet")? };
    write_roles(store, &[billing.clone(), empty.clone()]).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let found = tx.role(acme.id, billing.id).await.step("read the role")?;
    let found_empty = tx.role(acme.id, empty.id).await.step("read the role without permissions")?;
    let elsewhere = tx.role(globex.id, billing.id).await.step("read it as globex's")?;
    let unknown = tx.role(acme.id, role_id(9)).await.step("read an unknown id")?;
    let nowhere = tx.role(organization_id(9), billing.id).await.step("read it in a missing organization")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("the role", &found, &Some(billing))?;
    ensure_eq("the role without permissions", &found_empty, &Some(empty))?;
    ensure_eq("the role asked for in another organization", &elsewhere, &None)?;
    ensure_eq("an unknown role", &unknown, &None)?;
    ensure_eq("the role asked for in a missing organization", &nowhere, &None)
}

/// `roles_in` lists one organization's roles, each whole, in byte order of their names (a hyphen
/// before a digit before a letter, as SQLite's BINARY collation has it), and none of another's.
pub async fn roles_are_listed_in_name_order_and_only_their_organizations(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let mut acmes = Vec::new();
    for (seed, name) in [(1, "support"), (2, "ab"), (3, "a-z"), (4, "billing"), (5, "a1")] {
        acmes.push(custom_role(seed, acme.id, name)?);
    }
    let globexes = vec![custom_role(6, globex.id, "ac")?, custom_role(7, globex.id, "a0")?];
    write_roles(store, &acmes).await?;
    write_roles(store, &globexes).await?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_acme = tx.roles_in(acme.id).await.step("list acme's roles")?;
    let of_globex = tx.roles_in(globex.id).await.step("list globex's roles")?;
    let of_nobody = tx.roles_in(organization_id(9)).await.step("list a missing organization's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("acme's role names", &names(&of_acme), &vec!["a-z", "a1", "ab", "billing", "support"])?;
    let mut expected = acmes;
    expected.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    ensure_eq("acme's roles, each whole", &of_acme, &expected)?;
    ensure_eq("globex's role names", &names(&of_globex), &vec!["a0", "ac"])?;
    ensure_eq("a missing organization's roles", &of_nobody, &Vec::new())
}

/// A name taken in the organization is `Conflict { entity: "role" }` and leaves the first role
/// alone; the same name in another organization is a role of its own. A role of a missing
/// organization is `Conflict { entity: "role" }` too (the foreign key).
pub async fn a_taken_role_name_is_a_conflict_in_its_organization_but_free_in_another(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = custom_role(1, acme.id, "billing")?;
    write_roles(store, slice::from_ref(&billing)).await?;

    let mut tx = store.begin().await.step("begin the second billing of acme")?;
    let taken = tx.insert_role(&custom_role(2, acme.id, "billing")?).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let mut tx = store.begin().await.step("begin a role of a missing organization")?;
    let orphan = tx.insert_role(&custom_role(3, organization_id(9), "billing")?).await;
    tx.rollback().await.step("roll back after the conflict")?;
    let globex_billing = custom_role(4, globex.id, "billing")?;
    write_roles(store, slice::from_ref(&globex_billing)).await?;

    ensure_conflict("a taken name in the same organization", taken, "role")?;
    ensure_conflict("a role of a missing organization", orphan, "role")?;
    ensure_eq("acme's roles", &committed_roles_in(store, acme.id).await?, &vec![billing])?;
    ensure_eq("globex's roles", &committed_roles_in(store, globex.id).await?, &vec![globex_billing])
}

/// `update_role` replaces the name, the permissions and `updated_at` of the role matched by
/// organization and id, and leaves `created_at` and the other roles alone; a missing role, or the
/// right id under another organization, is reported as false and changes nothing.
pub async fn updating_a_role_changes_its_name_permissions_and_updated_at_and_reports_a_missing_one(
    store: &dyn Store,
) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = custom_role(1, acme.id, "billing")?;
    let support = custom_role(2, acme.id, "support")?;
    write_roles(store, &[billing.clone(), support.clone()]).await?;
    let finance = CustomRole {
        name: role_name("finance")?,
        permissions: permissions(&["invoices:*", "*:read"])?,
        created_at: at(40),
        updated_at: at(50),
        ..billing.clone()
    };
    let stolen = CustomRole { organization: globex.id, name: role_name("stolen")?, ..finance.clone() };
    let unknown = CustomRole { id: role_id(9), name: role_name("unknown")?, ..finance.clone() };

    let mut tx = store.begin().await.step("begin")?;
    let updated = tx.update_role(&finance).await.step("update billing")?;
    let under_globex = tx.update_role(&stolen).await.step("update it as globex's")?;
    let missing = tx.update_role(&unknown).await.step("update an unknown role")?;
    tx.commit().await.step("commit")?;

    ensure_eq("updates found their rows", &(updated, under_globex, missing), &(true, false, false))?;
    ensure_eq(
        "acme's roles",
        &committed_roles_in(store, acme.id).await?,
        &vec![CustomRole { created_at: billing.created_at, ..finance }, support],
    )?;
    ensure_eq("globex's roles", &committed_roles_in(store, globex.id).await?, &Vec::new())
}

/// Renaming a role onto a name another role of its organization has is
/// `Conflict { entity: "role" }` and changes nothing; keeping its own name, or taking a name used
/// only in another organization, is fine.
pub async fn renaming_a_role_onto_a_taken_name_is_a_conflict(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    let (acme, globex) = (organization(1, "acme")?, organization(2, "globex")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let billing = custom_role(1, acme.id, "billing")?;
    let support = custom_role(2, acme.id, "support")?;
    let ops = custom_role(3, globex.id, "ops")?;
    write_roles(store, &[billing.clone(), support.clone(), ops.clone()]).await?;

    let mut tx = store.begin().await.step("begin the rename onto support")?;
    let taken =
        tx.update_role(&CustomRole { name: role_name("support")?, ..billing.clone() }).await.map(|_| ());
    tx.rollback().await.step("roll back after the conflict")?;
    let unchanged = committed_roles_in(store, acme.id).await?;

    let same_name =
        CustomRole { permissions: permissions(&["invoices:read"])?, updated_at: at(20), ..billing };
    let like_globex = CustomRole { name: role_name("ops")?, updated_at: at(30), ..same_name.clone() };
    let mut tx = store.begin().await.step("begin the allowed updates")?;
    let kept = tx.update_role(&same_name).await.step("update keeping its own name")?;
    let renamed = tx.update_role(&like_globex).await.step("rename onto a name globex uses")?;
    tx.commit().await.step("commit")?;

    ensure_conflict("a rename onto a taken name", taken, "role")?;
    ensure_eq("acme's role names after the conflict", &names(&unchanged), &vec!["billing", "support"])?;
    ensure_eq("the allowed updates found their row", &(kept, renamed), &(true, true))?;
    ensure_eq("acme's roles", &committed_roles_in(store, acme.id).await?, &vec![like_globex, support])?;
    ensure_eq("globex's roles", &committed_roles_in(store, globex.id).await?, &vec![ops])
}

/// `set_member_roles` makes the list exactly what the member holds in that organization (a role
/// listed twice is held once, and the member's roles elsewhere stay); `member_roles` reads them in
/// name order, `roles_of` in organization id then name order, and `role_holders` in user id order
/// up to its limit.
pub async fn member_roles_are_replaced_and_read_back_in_their_documented_orders(
    store: &dyn Store,
) -> Outcome {
    let scene = role_scene(store).await?;
    let (acme, globex, alice, bob) = (scene.acme, scene.globex, scene.alice, scene.bob);
    let billing = scene.billing.id;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let alice_in_acme = tx.member_roles(acme, alice).await.step("alice's roles in acme")?;
    let alice_in_globex = tx.member_roles(globex, alice).await.step("alice's roles in globex")?;
    let of_alice = tx.roles_of(alice).await.step("every role of alice")?;
    let holders = tx.role_holders(acme, billing, 10).await.step("billing's holders")?;
    let first_holder = tx.role_holders(acme, billing, 1).await.step("billing's first holder")?;
    let under_globex = tx.role_holders(globex, billing, 10).await.step("billing's holders as globex's")?;
    let of_stranger = tx.roles_of(user_id(9)).await.step("every role of a stranger")?;
    tx.commit().await.step("end the read")?;

    let mut tx = store.begin().await.step("begin the replacement")?;
    let support = scene.support.id;
    tx.set_member_roles(acme, alice, &[support, support]).await.step("alice holds support only")?;
    tx.set_member_roles(acme, bob, &[]).await.step("bob holds nothing")?;
    tx.commit().await.step("commit the replacement")?;

    ensure_eq("alice's roles in acme, in name order", &names(&alice_in_acme), &vec!["billing", "support"])?;
    ensure_eq("alice's roles in acme, each whole", &alice_in_acme, &vec![scene.billing, scene.support])?;
    ensure_eq("alice's roles in globex", &alice_in_globex, &vec![scene.ops])?;
    // globex's id sorts before acme's.
    ensure_eq("every role of alice, by organization", &names(&of_alice), &vec!["ops", "billing", "support"])?;
    ensure_eq("billing's holders, in user id order", &holders, &vec![bob, alice])?;
    ensure_eq("billing's holders up to the limit", &first_holder, &vec![bob])?;
    ensure_eq("billing's holders asked for as globex's", &under_globex, &Vec::new())?;
    ensure_eq("every role of a stranger", &of_stranger, &Vec::new())?;
    ensure_eq(
        "alice's roles in acme after",
        &names(&committed_member_roles(store, acme, alice).await?),
        &vec!["support"],
    )?;
    ensure_eq("bob's roles in acme after", &committed_member_roles(store, acme, bob).await?, &Vec::new())?;
    ensure_eq("billing's holders after", &committed_role_holders(store, acme, billing).await?, &Vec::new())?;
    ensure_eq(
        "every role of alice after",
        &names(&committed_roles_of(store, alice).await?),
        &vec!["ops", "support"],
    )
}

/// Only a member holds roles, and only its organization's: an account that is not a member, another
/// organization's role and a missing role are each `Conflict { entity: "membership" }`, after
/// which the transaction refuses to commit and the member's roles are as they were.
pub async fn member_roles_for_a_non_member_or_from_another_organization_are_a_membership_conflict(
    store: &dyn Store,
) -> Outcome {
    let scene = role_scene(store).await?;
    let carol = user(3, "carol@example.com");
    write_users(store, slice::from_ref(&carol)).await?;

    for (what, member, role) in [
        ("an account that is not a member", carol.id, scene.billing.id),
        ("another organization's role", scene.alice, scene.ops.id),
        ("a missing role", scene.alice, role_id(9)),
    ] {
        let mut tx = store.begin().await.step("begin")?;
        let refused = tx.set_member_roles(scene.acme, member, &[role]).await;
        let commit = tx.commit().await;
        ensure_conflict(&format!("roles for {what}"), refused, "membership")?;
        match commit {
            Err(StoreError::Database(_)) => {}
            other => {
                return Err(Failure(format!(
                    "commit after roles for {what}: expected Database error, got {other:?}"
                )));
            }
        }
    }

    ensure_eq(
        "alice's roles in acme",
        &names(&committed_member_roles(store, scene.acme, scene.alice).await?),
        &vec!["billing", "support"],
    )?;
    ensure_eq(
        "carol's roles in acme",
        &committed_member_roles(store, scene.acme, carol.id).await?,
        &Vec::new(),
    )
}

/// Deleting a role takes every holding of it and no other; the right id under another organization
/// deletes nothing, and deleting it again reports false.
pub async fn deleting_a_role_takes_its_holdings_and_reports_false_the_second_time(
    store: &dyn Store,
) -> Outcome {
    let scene = role_scene(store).await?;
    let (acme, globex, billing) = (scene.acme, scene.globex, scene.billing.id);

    let mut tx = store.begin().await.step("begin the delete")?;
    let under_globex = tx.delete_role(globex, billing).await.step("delete billing as globex's")?;
    let deleted = tx.delete_role(acme, billing).await.step("delete billing")?;
    let again = tx.delete_role(acme, billing).await.step("delete billing again")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let found = tx.role(acme, billing).await.step("read billing")?;
    let holders = tx.role_holders(acme, billing, 10).await.step("billing's holders")?;
    let of_bob = tx.member_roles(acme, scene.bob).await.step("bob's roles in acme")?;
    let of_alice = tx.roles_of(scene.alice).await.step("every role of alice")?;
    let left = tx.roles_in(acme).await.step("acme's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted once", &(under_globex, deleted, again), &(false, true, false))?;
    ensure_eq("billing", &found, &None)?;
    ensure_eq("billing's holders", &holders, &Vec::new())?;
    ensure_eq("bob's roles in acme", &of_bob, &Vec::new())?;
    ensure_eq("every role of alice", &names(&of_alice), &vec!["ops", "support"])?;
    ensure_eq("acme's roles", &left, &vec![scene.support])
}

/// Changing a member's built-in role keeps the custom roles they hold: the membership is changed
/// in place, not replaced.
pub async fn changing_a_members_builtin_role_keeps_the_custom_roles_they_hold(store: &dyn Store) -> Outcome {
    let scene = role_scene(store).await?;

    let mut tx = store.begin().await.step("begin")?;
    tx.set_membership(scene.acme, scene.alice, BuiltinRole::Admin, at(5)).await.step("promote alice")?;
    tx.commit().await.step("commit")?;

    ensure_eq(
        "alice's roles in acme",
        &names(&committed_member_roles(store, scene.acme, scene.alice).await?),
        &vec!["billing", "support"],
    )
}

/// Removing a membership takes the roles held in it (joining again brings none back), but not the
/// roles themselves nor the member's roles elsewhere.
pub async fn removing_a_membership_takes_the_roles_held_in_it(store: &dyn Store) -> Outcome {
    let scene = role_scene(store).await?;
    let (acme, alice) = (scene.acme, scene.alice);

    let mut tx = store.begin().await.step("begin the removal")?;
    let removed = tx.remove_membership(acme, alice).await.step("remove alice from acme")?;
    tx.commit().await.step("commit the removal")?;
    let gone = committed_member_roles(store, acme, alice).await?;
    let mut tx = store.begin().await.step("begin the rejoin")?;
    tx.set_membership(acme, alice, BuiltinRole::Member, at(5)).await.step("alice joins acme again")?;
    tx.commit().await.step("commit the rejoin")?;

    ensure_eq("removed", &removed, &true)?;
    ensure_eq("alice's roles in acme after the removal", &gone, &Vec::new())?;
    ensure_eq(
        "alice's roles in acme after joining again",
        &committed_member_roles(store, acme, alice).await?,
        &Vec::new(),
    )?;
    ensure_eq(
        "billing's holders",
        &committed_role_holders(store, acme, scene.billing.id).await?,
        &vec![scene.bob],
    )?;
    ensure_eq("every role of alice", &names(&committed_roles_of(store, alice).await?), &vec!["ops"])?;
    ensure_eq("acme's roles", &committed_roles_in(store, acme).await?, &vec![scene.billing, scene.support])
}

/// Deleting an organization takes its roles and every holding of them, and nothing of another
/// organization's.
pub async fn deleting_an_organization_takes_its_roles_and_their_holdings(store: &dyn Store) -> Outcome {
    let scene = role_scene(store).await?;
    let acme = scene.acme;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_organization(acme).await.step("delete acme")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let roles = tx.roles_in(acme).await.step("acme's roles")?;
    let billing = tx.role(acme, scene.billing.id).await.step("read billing")?;
    let holders = tx.role_holders(acme, scene.billing.id, 10).await.step("billing's holders")?;
    let of_alice = tx.roles_of(scene.alice).await.step("every role of alice")?;
    let of_bob = tx.roles_of(scene.bob).await.step("every role of bob")?;
    let of_globex = tx.roles_in(scene.globex).await.step("globex's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("acme's roles", &roles, &Vec::new())?;
    ensure_eq("billing", &billing, &None)?;
    ensure_eq("billing's holders", &holders, &Vec::new())?;
    ensure_eq("every role of alice", &of_alice, &vec![scene.ops.clone()])?;
    ensure_eq("every role of bob", &of_bob, &Vec::new())?;
    ensure_eq("globex's roles", &of_globex, &vec![scene.ops])
}

/// Deleting an account takes the roles it held, in every organization, and no one else's.
pub async fn deleting_an_account_takes_the_roles_it_held(store: &dyn Store) -> Outcome {
    let scene = role_scene(store).await?;

    let mut tx = store.begin().await.step("begin the delete")?;
    let deleted = tx.delete_user(scene.alice, at(5)).await.step("delete alice")?;
    tx.commit().await.step("commit the delete")?;

    let mut tx = store.begin_read().await.step("begin a read")?;
    let of_alice = tx.roles_of(scene.alice).await.step("every role of alice")?;
    let in_acme = tx.member_roles(scene.acme, scene.alice).await.step("alice's roles in acme")?;
    let billing = tx.role_holders(scene.acme, scene.billing.id, 10).await.step("billing's holders")?;
    let support = tx.role_holders(scene.acme, scene.support.id, 10).await.step("support's holders")?;
    let ops = tx.role_holders(scene.globex, scene.ops.id, 10).await.step("ops's holders")?;
    let roles = tx.roles_in(scene.acme).await.step("acme's roles")?;
    tx.commit().await.step("end the read")?;

    ensure_eq("deleted", &deleted, &true)?;
    ensure_eq("every role of alice", &of_alice, &Vec::new())?;
    ensure_eq("alice's roles in acme", &in_acme, &Vec::new())?;
    ensure_eq(
        "holders of billing, support and ops",
        &(billing, support, ops),
        &(vec![scene.bob], Vec::new(), Vec::new()),
    )?;
    ensure_eq("acme's roles", &roles, &vec![scene.billing, scene.support])
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// The health check's round trip answers on a working database, migrated or not.
pub async fn ping_answers(store: &dyn Store) -> Outcome {
    store.ping().await.step("ping before migrating")?;
    migrated(store).await?;
    store.ping().await.step("ping after migrating")
}

/// `close` returns once every connection is closed, and afterwards the store answers
/// `Unavailable` instead of hanging or panicking, so shutdown can close the store before the last
/// request has finished with it.
pub async fn close_is_clean(store: &dyn Store) -> Outcome {
    migrated(store).await?;
    write_instance(store, &instance(1)).await?;

    store.close().await;
    let ping = store.ping().await;
    let begin = store.begin().await.map(|_| ());
    let begin_read = store.begin_read().await.map(|_| ());

    ensure_unavailable("ping after close", ping)?;
    ensure_unavailable("begin after close", begin)?;
    ensure_unavailable("begin_read after close", begin_read)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A distinct, valid instance for each seed.
fn instance(seed: u8) -> InstanceMeta {
    InstanceMeta {
        id: InstanceId::from_random_bytes([seed; 16]),
        created_at: Timestamp::from_unix_millis(1_767_225_600_000 + i64::from(seed)),
        created_by_version: format!("0.{seed}.0"),
    }
}

/// The base of every fixture time: 2026-01-01, well past 32 bits of milliseconds.
const T0: i64 = 1_767_225_600_000;

/// `offset` milliseconds after [`T0`].
fn at(offset: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + offset)
}

fn user_id(seed: u8) -> UserId {
    UserId::from_random_bytes([seed; 16])
}

fn organization_id(seed: u8) -> OrganizationId {
    OrganizationId::from_random_bytes([seed; 16])
}

fn slug(text: &str) -> Result<OrganizationSlug, Failure> {
    OrganizationSlug::parse(text).map_err(|e| Failure(format!("fixture slug {text:?}: {e}")))
}

fn display_name(text: &str) -> Result<DisplayName, Failure> {
    DisplayName::parse(text).map_err(|e| Failure(format!("fixture name {text:?}: {e}")))
}

/// An organization with the given slug, named after it, created at [`T0`] plus the seed.
fn organization(seed: u8, slug_text: &str) -> Result<Organization, Failure> {
    Ok(Organization {
        id: organization_id(seed),
        slug: slug(slug_text)?,
        name: display_name(&format!("Organization {slug_text}"))?,
        created_at: at(i64::from(seed)),
    })
}

fn role_id(seed: u8) -> RoleId {
    RoleId::from_random_bytes([seed; 16])
}

fn role_name(text: &str) -> Result<RoleName, Failure> {
    RoleName::parse(text).map_err(|e| Failure(format!("fixture role name {text:?}: {e}")))
}

fn permissions(texts: &[&str]) -> Result<Vec<Permission>, Failure> {
    texts
        .iter()
        .map(|text| Permission::parse(text).map_err(|e| Failure(format!("fixture permission {text:?}: {e}"))))
        .collect()
}

/// A role of `organization` named `name` granting `users:read`, created and updated at [`T0`] plus
/// the seed.
fn custom_role(seed: u8, organization: OrganizationId, name: &str) -> Result<CustomRole, Failure> {
    Ok(CustomRole {
        id: role_id(seed),
        organization,
        name: role_name(name)?,
        permissions: permissions(&["users:read"])?,
        created_at: at(i64::from(seed)),
        updated_at: at(i64::from(seed)),
    })
}

/// The roles' names, in the order given.
fn names(roles: &[CustomRole]) -> Vec<&str> {
    roles.iter().map(|r| r.name.as_str()).collect()
}

/// Two organizations whose members are alice and bob, with custom roles held in both.
struct RoleScene {
    /// Its id sorts after globex's.
    acme: OrganizationId,
    globex: OrganizationId,
    /// Her id sorts after bob's.
    alice: UserId,
    bob: UserId,
    /// Acme's; held by alice and bob.
    billing: CustomRole,
    /// Acme's; held by alice.
    support: CustomRole,
    /// Globex's; held by alice.
    ops: CustomRole,
}

/// Migrates and writes the [`RoleScene`], each member's roles given out of name order.
async fn role_scene(store: &dyn Store) -> Result<RoleScene, Failure> {
    migrated(store).await?;
    let (globex, acme) = (organization(1, "globex")?, organization(2, "acme")?);
    write_organizations(store, &[acme.clone(), globex.clone()]).await?;
    let (alice, bob) = (user(0xa1, "alice@example.com"), user(0x1b, "bob@example.com"));
    write_users(store, &[alice.clone(), bob.clone()]).await?;
    let (support, billing) = (custom_role(1, acme.id, "support")?, custom_role(2, acme.id, "billing")?);
    let ops = custom_role(3, globex.id, "ops")?;
    write_roles(store, &[support.clone(), billing.clone(), ops.clone()]).await?;

    let mut tx = store.begin().await.step("begin the memberships")?;
    for (org, member) in [(acme.id, alice.id), (acme.id, bob.id), (globex.id, alice.id), (globex.id, bob.id)]
    {
        tx.set_membership(org, member, BuiltinRole::Member, at(1)).await.step("set a membership")?;
    }
    tx.set_member_roles(acme.id, alice.id, &[support.id, billing.id]).await.step("alice's roles in acme")?;
    tx.set_member_roles(globex.id, alice.id, &[ops.id]).await.step("alice's roles in globex")?;
    tx.set_member_roles(acme.id, bob.id, &[billing.id]).await.step("bob's roles in acme")?;
    tx.commit().await.step("commit the memberships and their roles")?;
    Ok(RoleScene { acme: acme.id, globex: globex.id, alice: alice.id, bob: bob.id, billing, support, ops })
}

/// Inserts and commits the custom roles in a transaction of their own.
async fn write_roles(store: &dyn Store, roles: &[CustomRole]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for role in roles {
        tx.insert_role(role).await.step("insert a role")?;
    }
    tx.commit().await.step("commit the roles")
}

/// The organization's roles as a new read transaction lists them.
async fn committed_roles_in(
    store: &dyn Store,
    organization: OrganizationId,
) -> Result<Vec<CustomRole>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.roles_in(organization).await.step("list the roles")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The roles the member holds in the organization, as a new read transaction lists them.
async fn committed_member_roles(
    store: &dyn Store,
    organization: OrganizationId,
    user: UserId,
) -> Result<Vec<CustomRole>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.member_roles(organization, user).await.step("list the member's roles")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Every role the account holds, as a new read transaction lists them.
async fn committed_roles_of(store: &dyn Store, user: UserId) -> Result<Vec<CustomRole>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.roles_of(user).await.step("list the account's roles")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Up to ten holders of the role, as a new read transaction lists them.
async fn committed_role_holders(
    store: &dyn Store,
    organization: OrganizationId,
    role: RoleId,
) -> Result<Vec<UserId>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.role_holders(organization, role, 10).await.step("list the role's holders")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

fn session_id(seed: u8) -> SessionId {
    SessionId::from_random_bytes([seed; 16])
}

/// A distinct token digest for each seed.
fn token(seed: u8) -> TokenHash {
    TokenHash([seed; 32])
}

/// The personal-data key the fixtures seal under, and the blind-index key they index with.
const PII_KEY: &str = "pii-1";
const INDEX_KEY: &str = "bi-1";

/// Stand-in ciphertext: `app` seals, the store only keeps bytes, so any bytes do. A NUL, a byte that
/// is not UTF-8 and a high byte show that nothing along the way treats them as text.
fn sealed(text: &str) -> Sealed {
    Sealed([b"sealed:", text.as_bytes(), &[0x00, 0xff, 0x80]].concat())
}

/// A distinct blind index for each seed.
fn index(seed: u8) -> BlindIndex {
    BlindIndex([seed; 32])
}

/// An active member with nothing optional set, created at [`T0`], its address sealed under
/// [`PII_KEY`] and indexed (as `index(seed)`) under [`INDEX_KEY`].
fn user(seed: u8, address: &str) -> StoredUser {
    StoredUser {
        id: user_id(seed),
        email: sealed(address),
        email_index: index(seed),
        index_key: INDEX_KEY.to_owned(),
        display_name: None,
        pii_key: PII_KEY.to_owned(),
        email_verified_at: None,
        status: UserStatus::Active,
        role: BuiltinRole::Member,
        created_at: at(0),
        updated_at: at(0),
        last_login_at: None,
    }
}

/// A live bearer session created `created` milliseconds after [`T0`], good for a day.
fn session(seed: u8, owner: UserId, created: i64) -> Session {
    Session {
        id: session_id(seed),
        user_id: owner,
        kind: SessionKind::Bearer,
        created_at: at(created),
        last_seen_at: at(created),
        expires_at: at(created + 86_400_000),
        mfa_level: 0,
        amr: AuthMethods::PASSWORD,
        authenticated_at: at(created),
        mfa_enrollment_required: false,
        revoked_at: None,
    }
}

/// The session as stored without client details (and so without a personal-data key).
fn unsealed(session: Session) -> StoredSession {
    StoredSession { session, ip: None, user_agent: None, pii_key: None }
}

/// A token of `purpose` minted `created` milliseconds after [`T0`], with the purpose's lifetime and
/// no address.
fn one_time(seed: u8, purpose: OneTimePurpose, owner: Option<UserId>, created: i64) -> StoredOneTimeToken {
    StoredOneTimeToken {
        token: OneTimeToken {
            hash: token(seed),
            purpose,
            user_id: owner,
            created_at: at(created),
            expires_at: at(created + purpose.lifetime_millis()),
        },
        email: None,
        pii_key: None,
    }
}

/// A security event about `owner` at `offset` milliseconds after [`T0`], without a client address.
fn event(seed: u8, kind: SecurityEventKind, owner: Option<UserId>, offset: i64) -> StoredSecurityEvent {
    StoredSecurityEvent {
        event: SecurityEvent {
            id: SecurityEventId::from_random_bytes([seed; 16]),
            at: at(offset),
            kind,
            user_id: owner,
            session_id: None,
            details: [
                ("policy".to_string(), "login_ip".to_string()),
                ("count".to_string(), seed.to_string()),
            ]
            .into_iter()
            .collect(),
        },
        ip: None,
        pii_key: None,
    }
}

/// A key with a secret derived from its id (so two keys never share bytes by accident), wrapped
/// under `kek-1`, with the times its state implies: activated when created unless still `next`,
/// retired 5 ms later once retired or destroyed. Destroyed keys have no secret; only signing keys
/// have a public half.
fn key(id: &str, purpose: KeyPurpose, state: KeyState, created: i64) -> StoredKey {
    let algorithm = match purpose {
        KeyPurpose::Signing => "EdDSA",
        KeyPurpose::Pii => "XChaCha20-Poly1305",
        KeyPurpose::BlindIndex => "HMAC-SHA256",
        KeyPurpose::Audit => "Ed25519",
    };
    StoredKey {
        id: id.to_owned(),
        purpose,
        algorithm: algorithm.to_owned(),
        state,
        kek_id: "kek-1".to_owned(),
        wrapped: (state != KeyState::Destroyed).then(|| [id.as_bytes(), &[0x00, 0xff, 0x80]].concat()),
        public_key: (purpose == KeyPurpose::Signing).then(|| [&[0x00, 0x01], id.as_bytes()].concat()),
        created_at: at(created),
        activated_at: (state != KeyState::Next).then(|| at(created)),
        retired_at: matches!(state, KeyState::Retired | KeyState::Destroyed).then(|| at(created + 5)),
    }
}

/// Inserts and commits the users in a transaction of their own.
async fn write_users(store: &dyn Store, users: &[StoredUser]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for user in users {
        tx.insert_user(user).await.step("insert a user")?;
    }
    tx.commit().await.step("commit the users")
}

/// Inserts and commits the organizations in a transaction of their own.
async fn write_organizations(store: &dyn Store, organizations: &[Organization]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for organization in organizations {
        tx.insert_organization(organization).await.step("insert an organization")?;
    }
    tx.commit().await.step("commit the organizations")
}

/// The organization as a new read transaction sees it.
async fn committed_organization(
    store: &dyn Store,
    id: OrganizationId,
) -> Result<Option<Organization>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.organization(id).await.step("read the organization")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Inserts and commits the sessions (without cookies or client details) in a transaction of their own.
async fn write_sessions(store: &dyn Store, sessions: &[Session]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for session in sessions {
        tx.insert_session(&unsealed(session.clone()), None).await.step("insert a session")?;
    }
    tx.commit().await.step("commit the sessions")
}

/// Inserts and commits the single-use tokens in a transaction of their own.
async fn write_tokens(store: &dyn Store, tokens: &[StoredOneTimeToken]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for token in tokens {
        tx.insert_one_time_token(token).await.step("insert a one-time token")?;
    }
    tx.commit().await.step("commit the one-time tokens")
}

/// The account as a new read transaction sees it.
async fn committed_user(store: &dyn Store, id: UserId) -> Result<Option<StoredUser>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.user_by_id(id).await.step("read the user")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The session as a new read transaction sees it.
async fn committed_session(store: &dyn Store, id: SessionId) -> Result<Option<Session>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.session(id).await.step("read the session")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The account's session list as a new read transaction sees it, without the client details.
async fn committed_sessions_of(
    store: &dyn Store,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<Session>, Failure> {
    Ok(committed_stored_sessions_of(store, user, now).await?.into_iter().map(|s| s.session).collect())
}

/// The account's session list, with the sealed client details, as a new read transaction sees it.
async fn committed_stored_sessions_of(
    store: &dyn Store,
    user: UserId,
    now: Timestamp,
) -> Result<Vec<StoredSession>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.sessions_of(user, now).await.step("list the sessions")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// The keyring as a new read transaction sees it.
async fn committed_keys(store: &dyn Store) -> Result<Vec<StoredKey>, Failure> {
    let mut reader = store.begin_read().await.step("begin a read")?;
    let found = reader.keys().await.step("read the keyring")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

/// Inserts and commits the keys in a transaction of their own.
async fn write_keys(store: &dyn Store, keys: &[StoredKey]) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    for key in keys {
        tx.insert_key(key).await.step("insert a key")?;
    }
    tx.commit().await.step("commit the keys")
}

/// Inserts one key in a transaction of its own and rolls it back, returning what the insert said.
async fn try_insert_key(store: &dyn Store, key: &StoredKey) -> Result<Result<(), StoreError>, Failure> {
    let mut tx = store.begin().await.step("begin an insert")?;
    let inserted = tx.insert_key(key).await;
    tx.rollback().await.step("roll back the insert")?;
    Ok(inserted)
}

/// Spends a refresh token in a write transaction of its own, as one refresh request does.
async fn spend_refresh_token_alone(
    store: &dyn Store,
    token: TokenHash,
    at: Timestamp,
) -> Result<RefreshSpend, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_refresh_token(&token, at).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Spends a single-use token in a write transaction of its own, as one request does.
async fn spend_one_time_token_alone(
    store: &dyn Store,
    token: TokenHash,
    purpose: OneTimePurpose,
    now: Timestamp,
) -> Result<Option<StoredOneTimeToken>, StoreError> {
    let mut tx = store.begin().await?;
    let spent = tx.spend_one_time_token(&token, purpose, now).await?;
    tx.commit().await?;
    Ok(spent)
}

/// Holds two read transactions open at once, so a pooled engine keeps two idle connections.
///
/// Without this, of two racing writers one would take the only idle connection and finish while
/// the other was still connecting, and the race would never reach the database's locking.
async fn open_two_connections(store: &dyn Store) -> Outcome {
    let (first, second) = tokio::join!(store.begin_read(), store.begin_read());
    first.step("open the first connection")?.commit().await.step("end the first read")?;
    second.step("open the second connection")?.commit().await.step("end the second read")
}

/// Brings the fresh database to the current schema, as every start does.
async fn migrated(store: &dyn Store) -> Outcome {
    store.migrate().await.step("migrate")?;
    Ok(())
}

/// Inserts and commits the instance in a transaction of its own.
async fn write_instance(store: &dyn Store, meta: &InstanceMeta) -> Outcome {
    let mut tx = store.begin().await.step("begin a write")?;
    tx.insert_instance(meta).await.step("insert the instance")?;
    tx.commit().await.step("commit the instance")
}

/// The instance as a new read transaction sees it.
async fn committed_instance(store: &dyn Store) -> Result<Option<InstanceMeta>, Failure> {
    let mut reader: Box<dyn StoreTx> = store.begin_read().await.step("begin a read")?;
    let found = reader.instance().await.step("read the instance")?;
    reader.commit().await.step("end the read")?;
    Ok(found)
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(Failure(message())) }
}

fn ensure_eq<T: PartialEq + fmt::Debug>(what: &str, actual: &T, expected: &T) -> Outcome {
    ensure(actual == expected, || format!("{what}: expected {expected:?}, got {actual:?}"))
}

fn ensure_conflict(what: &str, result: Result<(), StoreError>, entity: &str) -> Outcome {
    match result {
        Err(StoreError::Conflict { entity: e }) if e == entity => Ok(()),
        Err(other) => Err(Failure(format!(
            "{what}: expected Conflict {{ entity: {entity:?} }}, got {}",
            error_chain(&other)
        ))),
        Ok(()) => Err(Failure(format!("{what}: expected Conflict {{ entity: {entity:?} }}, got Ok"))),
    }
}

fn ensure_unavailable(what: &str, result: Result<(), StoreError>) -> Outcome {
    match result {
        Err(StoreError::Unavailable(_)) => Ok(()),
        Err(other) => Err(Failure(format!("{what}: expected Unavailable, got {}", error_chain(&other)))),
        Ok(()) => Err(Failure(format!("{what}: expected Unavailable, got Ok"))),
    }
}

/// Attaches the step that failed to a store error, with its whole cause chain, because the top
/// level of a `StoreError` ("database error") alone says nothing about what went wrong.
trait Step<T> {
    fn step(self, what: &str) -> Result<T, Failure>;
}

impl<T> Step<T> for Result<T, StoreError> {
    fn step(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {}", error_chain(&e))))
    }
}
