//! One conformance suite for both storage implementations.

mod common;

use std::sync::Arc;

use authgate::{
    clock,
    config::DatabaseUrl,
    domain::{Email, Role, Roles, Username},
    store::{
        self, Added, Attempt, AuditContext, AuditFilter, AuditKind, AuditRecord, AuthorizationCode,
        Ceremony, CeremonyPurpose, CodeCheck, CodeRedemption, Effects, Factor, FactorKind,
        FlowPurpose, KeyGuard, MailStatus, NewChallenge, NewClientSession, NewFlowToken,
        NewSession, NewUser, OAuthClient, OutboxMail, ProvedFactor, Redeemed, Redemption,
        RefreshRequest, RevokeReason, Rotation, SessionAuth, Store, StoreError, StoredKey,
        StoredPasskey, UserChanges, UserFilter,
    },
};
use common::{Backend, TestDb};
use libtest_mimic::Arguments;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn main() {
    let trials = trials(common::postgres_reachable());
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

async fn open(backend: Backend) -> (Arc<dyn Store>, TestDb) {
    let db = TestDb::new(backend).await;
    let store = store::connect(&db.url.parse::<DatabaseUrl>().unwrap())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        id: Uuid::now_v7(),
        username: Some(Username::parse(name).unwrap()),
        email: Some(Email::parse(&format!("{name}@Example.com")).unwrap()),
        password_hash: HASH.into(),
        roles: Roles::new([Role::user()]),
        email_verified: false,
        created_at: clock::now(),
    }
}

fn session_for(user_id: Uuid, refresh: u8, lifetime: Duration) -> NewSession {
    let now = clock::now();
    NewSession {
        id: Uuid::now_v7(),
        user_id,
        created_at: now,
        expires_at: now + lifetime,
        refresh_hash: [refresh; 32],
        refresh_expires_at: now + lifetime,
        user_agent: Some(format!("agent {refresh}")),
        ip: Some("192.0.2.1".into()),
        password_hash: HASH.into(),
        roles: Roles::new([Role::user()]),
        level: "aal1".into(),
        methods: vec!["pwd".into()],
        factor: None,
    }
}

/// The password hash every test user starts with.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

on_both_databases!(
    a_created_user_reads_back_identically_by_id_username_and_email,
    a_duplicate_username_or_email_is_a_conflict_naming_the_field,
    create_user_if_absent_creates_once,
    users_are_listed_in_id_order_after_the_cursor,
    a_refresh_token_rotates_once_and_its_reuse_revokes_the_session,
    within_the_grace_window_a_used_token_gives_its_sealed_successor_again,
    a_rotation_never_outlives_the_session,
    an_expired_refresh_token_does_not_rotate,
    updating_a_user_ends_their_sessions_in_the_same_change,
    an_update_that_changes_nothing_ends_no_session,
    an_added_role_joins_the_roles_the_user_has_at_the_change,
    a_session_opens_only_while_the_credentials_it_was_checked_with_hold,
    a_hash_upgrade_never_undoes_a_password_change,
    the_last_active_admin_cannot_be_demoted_or_disabled,
    revoking_by_refresh_token_and_by_user_ends_sessions,
    a_key_is_inserted_only_if_its_guard_allows_it,
    keys_are_listed_in_the_order_they_activate_with_every_field,
    revoking_a_key_can_put_a_replacement_in_its_place_in_one_step,
    instances_starting_together_store_one_signing_key,
    purge_deletes_expired_sessions_and_tokens_only,
    a_used_token_outlives_the_purge_so_its_reuse_is_still_caught,
    a_users_live_sessions_are_listed_newest_first_and_end_one_by_one,
    a_password_change_ends_every_session_but_the_one_kept,
    deleting_a_user_removes_its_sessions_but_never_the_last_admin,
    a_change_whose_caller_gives_up_still_finishes_and_leaves_clean_connections,
    live_sessions_answers_for_many_sessions_in_one_call,
    timestamps_round_trip_to_the_millisecond_in_the_stored_form,
    rows_written_with_plain_sql_read_back_through_the_store,
    a_link_is_used_up_once_even_by_racing_redemptions,
    a_link_is_bound_to_its_purpose_user_address_and_lifetime,
    a_newer_link_or_a_password_change_kills_older_links,
    a_reset_sets_the_password_ends_every_session_and_verifies_the_address,
    a_failed_change_writes_neither_its_mail_nor_its_audit_events,
    racing_claims_share_out_the_outbox_and_each_message_once,
    a_claim_that_runs_out_is_claimed_again_and_given_up_after_its_attempts,
    audit_events_page_newest_first_and_filter,
    a_purge_of_more_rows_than_one_batch_deletes_them_all,
    an_added_factor_is_listed_whole_oldest_first_and_only_for_its_user,
    adding_a_factor_drops_only_the_users_stale_unconfirmed_enrolments,
    a_factor_is_confirmed_once_with_its_recovery_codes_and_audit_event,
    a_totp_step_is_spent_once_and_only_forward_on_a_confirmed_factor,
    of_racing_uses_of_one_totp_step_exactly_one_succeeds,
    a_recovery_code_is_spent_once_and_only_by_its_user,
    of_racing_uses_of_one_recovery_code_exactly_one_succeeds,
    replacing_recovery_codes_voids_every_old_one,
    deleting_a_factor_takes_the_recovery_codes_only_with_the_last_confirmed_one,
    deleting_every_factor_removes_the_codes_and_counts_the_factors,
    a_challenge_counts_each_attempt_up_to_its_maximum,
    a_challenge_names_its_user_without_counting_an_attempt,
    a_challenge_is_dead_from_its_expiry_on,
    a_challenge_ends_once_and_then_takes_no_attempt,
    racing_attempts_on_a_challenge_each_count_and_stop_at_the_maximum,
    purge_deletes_expired_challenges_and_keeps_live_ones,
    deleting_a_user_removes_its_factors_codes_and_challenges,
    a_ceremony_is_taken_whole_once_and_only_for_its_purpose,
    a_ceremony_is_dead_from_its_expiry_on_and_taken_away_all_the_same,
    of_racing_takes_of_one_ceremony_exactly_one_gets_it,
    an_added_passkey_reads_back_whole_oldest_first_and_only_for_its_user,
    a_credential_id_stored_for_any_user_is_a_conflict_that_writes_nothing,
    using_a_passkey_records_its_credential_and_when,
    a_passkey_is_deleted_once_and_only_by_its_user_with_its_effects,
    purge_deletes_expired_ceremonies_and_keeps_live_ones,
    deleting_a_user_removes_its_passkeys_and_ceremonies,
    recovery_codes_stay_while_a_totp_factor_or_a_passkey_is_left,
    a_passkey_is_added_within_the_cap_and_as_first_factor_only_if_first,
    a_session_resting_on_a_factor_opens_only_while_the_factor_is_there,
    a_client_reads_back_whole_and_its_id_is_unique,
    a_client_is_deleted_once_with_its_effects,
    a_code_is_redeemed_once_and_a_replay_ends_the_session_it_opened,
    of_racing_redemptions_of_one_code_exactly_one_opens_a_session,
    a_code_dies_with_its_browser_session_and_fails_its_check_used_up,
    a_grant_is_saved_listed_and_revoked_with_the_clients_sessions,
);

async fn a_created_user_reads_back_identically_by_id_username_and_email(backend: Backend) {
    let (store, _db) = open(backend).await;
    let created = store
        .create_user(&new_user("alice"), &Default::default())
        .await
        .unwrap();
    assert_eq!(store.get_user(created.id).await.unwrap().unwrap(), created);
    let by_name = store.find_credentials("alice").await.unwrap().unwrap();
    assert_eq!(by_name.user, created);
    assert!(by_name.password_hash.starts_with("$argon2id$"));
    let by_email = store
        .find_credentials("alice@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.user, created);
    assert!(
        store.find_credentials("Alice").await.unwrap().is_none(),
        "lookups take the normalized form"
    );
    assert!(store.get_user(Uuid::now_v7()).await.unwrap().is_none());
}

async fn a_duplicate_username_or_email_is_a_conflict_naming_the_field(backend: Backend) {
    let (store, _db) = open(backend).await;
    store
        .create_user(&new_user("bob"), &Default::default())
        .await
        .unwrap();
    let mut same_name = new_user("bob");
    same_name.username = Some(Username::parse("BOB").unwrap());
    same_name.email = Some(Email::parse("other@example.com").unwrap());
    assert!(matches!(
        store.create_user(&same_name, &Default::default()).await,
        Err(StoreError::Conflict("username"))
    ));
    let mut same_email = new_user("bobby");
    same_email.email = Some(Email::parse("BOB@example.com").unwrap());
    assert!(matches!(
        store.create_user(&same_email, &Default::default()).await,
        Err(StoreError::Conflict("email"))
    ));
}

async fn create_user_if_absent_creates_once(backend: Backend) {
    let (store, _db) = open(backend).await;
    assert!(
        store
            .create_user_if_absent(&new_user("carol"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_user_if_absent(&new_user("carol"))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .list_users(&UserFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn users_are_listed_in_id_order_after_the_cursor(backend: Backend) {
    let (store, _db) = open(backend).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .create_user(&new_user(&format!("user{i}")), &Default::default())
                .await
                .unwrap()
                .id,
        );
    }
    let first = store
        .list_users(&UserFilter::default(), 2, None)
        .await
        .unwrap();
    assert_eq!(first.iter().map(|u| u.id).collect::<Vec<_>>(), ids[..2]);
    let rest = store
        .list_users(&UserFilter::default(), 10, Some(ids[1]))
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|u| u.id).collect::<Vec<_>>(), ids[2..]);
}

fn graced(presented: u8, next: u8, now: time::OffsetDateTime) -> RefreshRequest {
    RefreshRequest {
        presented: [presented; 32],
        next: [next; 32],
        next_expires_at: now + Duration::hours(1),
        now,
        sealed_next: Some(vec![next; 5]),
        grace_since: Some(now - Duration::seconds(10)),
        client_id: None,
    }
}

async fn within_the_grace_window_a_used_token_gives_its_sealed_successor_again(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("tabs"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    let by = AuditContext::default();
    assert!(matches!(
        store.rotate_refresh(&graced(1, 2, now), &by).await.unwrap(),
        Rotation::Rotated { .. }
    ));
    // Presented again moments later: the successor, sealed as stored.
    let later = now + Duration::seconds(5);
    match store
        .rotate_refresh(&graced(1, 3, later), &by)
        .await
        .unwrap()
    {
        Rotation::Repeated {
            session_id,
            sealed_next,
            rotated_at,
            next_expires_at,
            ..
        } => {
            assert_eq!(session_id, session.id);
            assert_eq!(sealed_next, vec![2; 5]);
            assert_eq!(rotated_at, now);
            assert_eq!(next_expires_at, now + Duration::hours(1));
        }
        other => panic!("expected the successor again, got {other:?}"),
    }
    // Nothing changed: the successor still rotates, once.
    assert!(matches!(
        store
            .rotate_refresh(&graced(2, 4, later), &by)
            .await
            .unwrap(),
        Rotation::Rotated { .. }
    ));
    // Now the first token's successor is used: presenting it is reuse.
    assert_eq!(
        store
            .rotate_refresh(&graced(1, 5, later), &by)
            .await
            .unwrap(),
        Rotation::Reused {
            session_id: session.id,
            user_id: user.id
        }
    );
    assert!(
        store
            .session_user(session.id, later)
            .await
            .unwrap()
            .is_none()
    );
    // And an ended session gives nothing back, even within the window.
    assert_eq!(
        store
            .rotate_refresh(&graced(2, 6, later), &by)
            .await
            .unwrap(),
        Rotation::Reused {
            session_id: session.id,
            user_id: user.id
        }
    );
}

async fn a_refresh_token_rotates_once_and_its_reuse_revokes_the_session(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("dave"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    assert!(store.session_user(session.id, now).await.unwrap().is_some());

    let first = store
        .rotate_refresh_token(
            &[1; 32],
            &[2; 32],
            now + Duration::hours(1),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    match first {
        Rotation::Rotated {
            session_id,
            user: u,
            ..
        } => {
            assert_eq!(session_id, session.id);
            assert_eq!(u, user);
        }
        other => panic!("expected a rotation, got {other:?}"),
    }
    let again = store
        .rotate_refresh_token(
            &[1; 32],
            &[3; 32],
            now + Duration::hours(1),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Rotation::Reused {
            session_id: session.id,
            user_id: user.id
        }
    );
    assert!(store.session_user(session.id, now).await.unwrap().is_none());
    let next = store
        .rotate_refresh_token(
            &[2; 32],
            &[4; 32],
            now + Duration::hours(1),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        next,
        Rotation::Invalid,
        "the rotated token died with its session"
    );
    let unknown = store
        .rotate_refresh_token(
            &[9; 32],
            &[5; 32],
            now + Duration::hours(1),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(unknown, Rotation::Invalid);
}

async fn a_rotation_never_outlives_the_session(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("erin"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::minutes(5));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    let rotated = store
        .rotate_refresh_token(
            &[1; 32],
            &[2; 32],
            now + Duration::days(7),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    let Rotation::Rotated {
        session_expires_at, ..
    } = rotated
    else {
        panic!("expected a rotation, got {rotated:?}");
    };
    assert_eq!(session_expires_at, session.expires_at);
    // The new token's own lifetime is longer, but it dies with the session.
    let after_the_session = session.expires_at + Duration::seconds(1);
    let late = store
        .rotate_refresh_token(
            &[2; 32],
            &[3; 32],
            after_the_session + Duration::days(7),
            after_the_session,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(late, Rotation::Invalid);
}

async fn an_expired_refresh_token_does_not_rotate(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("frank"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::minutes(5));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let later = clock::now() + Duration::minutes(6);
    let result = store
        .rotate_refresh_token(
            &[1; 32],
            &[2; 32],
            later + Duration::days(7),
            later,
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(result, Rotation::Invalid);
    assert!(
        store
            .session_user(session.id, later)
            .await
            .unwrap()
            .is_none()
    );
}

async fn updating_a_user_ends_their_sessions_in_the_same_change(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("gina"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let changes = UserChanges {
        is_active: Some(false),
        roles: Some(Roles::new([Role::user(), Role::admin()])),
        email_verified: None,
        ..Default::default()
    };
    let updated = store
        .update_user(user.id, &changes, clock::now(), &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert!(updated.sessions_ended);
    assert!(!updated.user.is_active);
    assert!(updated.user.roles.contains("admin"));
    assert!(
        store
            .session_user(session.id, clock::now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .update_user(Uuid::now_v7(), &changes, clock::now(), &Default::default())
            .await
            .unwrap()
            .is_none()
    );
}

async fn an_update_that_changes_nothing_ends_no_session(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("hugo"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    for changes in [
        UserChanges::default(),
        UserChanges {
            is_active: Some(true),
            roles: Some(Roles::new([Role::user()])),
            email_verified: None,
            ..Default::default()
        },
    ] {
        let updated = store
            .update_user(user.id, &changes, clock::now(), &Default::default())
            .await
            .unwrap()
            .unwrap();
        assert!(!updated.sessions_ended);
        assert_eq!(updated.user, user);
    }
    assert!(
        store
            .session_user(session.id, clock::now())
            .await
            .unwrap()
            .is_some()
    );
}

async fn the_last_active_admin_cannot_be_demoted_or_disabled(backend: Backend) {
    let (store, _db) = open(backend).await;
    let mut first = new_user("root1");
    first.roles = Roles::new([Role::user(), Role::admin()]);
    let mut second = new_user("root2");
    second.roles = first.roles.clone();
    let first = store
        .create_user(&first, &Default::default())
        .await
        .unwrap();
    let second = store
        .create_user(&second, &Default::default())
        .await
        .unwrap();
    let demote = UserChanges {
        is_active: None,
        roles: Some(Roles::new([Role::user()])),
        email_verified: None,
        ..Default::default()
    };
    let disable = UserChanges {
        is_active: Some(false),
        roles: None,
        email_verified: None,
        ..Default::default()
    };
    // Two admins demoting each other at once: one of the changes must fail.
    let by = AuditContext::default();
    let (a, b) = tokio::join!(
        store.update_user(first.id, &demote, clock::now(), &by),
        store.update_user(second.id, &demote, clock::now(), &by),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::LastAdmin)))
        .count();
    assert_eq!(refused, 1, "{a:?} {b:?}");
    let last = if a.is_ok() { second.id } else { first.id };
    assert!(matches!(
        store
            .update_user(last, &disable, clock::now(), &Default::default())
            .await,
        Err(StoreError::LastAdmin)
    ));
    let admin = store.get_user(last).await.unwrap().unwrap();
    assert!(admin.is_active_admin(), "a refused change leaves no trace");
}

async fn revoking_by_refresh_token_and_by_user_ends_sessions(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("hank"), &Default::default())
        .await
        .unwrap();
    let a = session_for(user.id, 1, Duration::days(1));
    let b = session_for(user.id, 2, Duration::days(1));
    let c = session_for(user.id, 3, Duration::days(1));
    for s in [&a, &b, &c] {
        store.create_session(s, &Default::default()).await.unwrap();
    }
    let now = clock::now();
    assert_eq!(
        store
            .revoke_session_by_refresh(&[1; 32], now, &Default::default())
            .await
            .unwrap(),
        Some(a.id)
    );
    assert_eq!(
        store
            .revoke_session_by_refresh(&[1; 32], now, &Default::default())
            .await
            .unwrap(),
        None,
        "already ended"
    );
    assert!(store.session_user(a.id, now).await.unwrap().is_none());
    assert!(store.session_user(b.id, now).await.unwrap().is_some());
    assert_eq!(
        store
            .revoke_user_sessions(
                user.id,
                None,
                RevokeReason::LogoutAll,
                now,
                &Default::default()
            )
            .await
            .unwrap(),
        2
    );
    assert!(store.session_user(c.id, now).await.unwrap().is_none());
}

fn key(kid: &str) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        algorithm: "HS256".into(),
        secret: kid.as_bytes().repeat(8),
        sealed: false,
        public_jwk: None,
        created_at: clock::now(),
        activates_at: clock::now(),
        revoked_at: None,
    }
}

/// A guard that lets a key in only if there is none.
fn if_none() -> KeyGuard {
    Arc::new(|keys: &[StoredKey]| keys.is_empty())
}

fn always() -> KeyGuard {
    Arc::new(|_: &[StoredKey]| true)
}

async fn a_key_is_inserted_only_if_its_guard_allows_it(backend: Backend) {
    let (store, _db) = open(backend).await;
    assert!(store.signing_keys().await.unwrap().is_empty());
    let first = key("first");
    assert!(
        store
            .insert_signing_key(&first, if_none(), &Default::default())
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert_signing_key(&key("second"), if_none(), &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.signing_keys().await.unwrap(), vec![first]);
}

async fn keys_are_listed_in_the_order_they_activate_with_every_field(backend: Backend) {
    let (store, _db) = open(backend).await;
    let mut later = key("later");
    later.activates_at = clock::now() + Duration::hours(1);
    later.sealed = true;
    later.algorithm = "EdDSA".into();
    later.public_jwk = Some(r#"{"kty":"OKP"}"#.into());
    let sooner = key("sooner");
    assert!(
        store
            .insert_signing_key(&later, always(), &Default::default())
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_signing_key(&sooner, always(), &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.signing_keys().await.unwrap(), vec![sooner, later]);
}

async fn revoking_a_key_can_put_a_replacement_in_its_place_in_one_step(backend: Backend) {
    let (store, _db) = open(backend).await;
    let old = key("old");
    assert!(
        store
            .insert_signing_key(&old, always(), &Default::default())
            .await
            .unwrap()
    );
    let at = clock::now() + Duration::minutes(1);
    let mut new = key("new");
    new.activates_at = at;
    // The guard sees the revocation already made.
    let sees_revoked: KeyGuard = Arc::new(move |keys: &[StoredKey]| {
        keys.iter()
            .any(|k| k.kid == "old" && k.revoked_at == Some(at))
    });
    assert!(
        store
            .revoke_signing_key(
                "old",
                at,
                Some((new.clone(), sees_revoked)),
                &Default::default()
            )
            .await
            .unwrap()
    );
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].revoked_at, Some(at));
    assert_eq!(keys[1], new);
    // Revoking again keeps the first revocation's time; an unknown key is
    // not found, and nothing is inserted for it.
    assert!(
        store
            .revoke_signing_key("old", at + Duration::hours(1), None, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.signing_keys().await.unwrap()[0].revoked_at, Some(at));
    assert!(
        !store
            .revoke_signing_key(
                "nope",
                at,
                Some((key("never"), always())),
                &Default::default()
            )
            .await
            .unwrap()
    );
    assert_eq!(store.signing_keys().await.unwrap().len(), 2);
    assert_eq!(
        store
            .delete_signing_keys(&["old".into(), "nope".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.signing_keys().await.unwrap(), vec![new]);
}

async fn purge_deletes_expired_sessions_and_tokens_only(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("ivan"), &Default::default())
        .await
        .unwrap();
    let short = session_for(user.id, 1, Duration::minutes(1));
    let long = session_for(user.id, 2, Duration::days(1));
    store
        .create_session(&short, &Default::default())
        .await
        .unwrap();
    store
        .create_session(&long, &Default::default())
        .await
        .unwrap();
    let later = clock::now() + Duration::minutes(2);
    let purged = store
        .purge(later, later - Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(purged, 2, "one refresh token and one session");
    assert!(store.session_user(long.id, later).await.unwrap().is_some());
    let rotated = store
        .rotate_refresh_token(
            &[2; 32],
            &[3; 32],
            later + Duration::hours(1),
            later,
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(matches!(rotated, Rotation::Rotated { .. }));
}

async fn a_used_token_outlives_the_purge_so_its_reuse_is_still_caught(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("iris"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    let hour = Duration::hours(1);
    store
        .rotate_refresh_token(&[1; 32], &[2; 32], now + hour, now, &Default::default())
        .await
        .unwrap();
    let later = now + hour * 3;
    store
        .rotate_refresh_token(&[2; 32], &[3; 32], later + hour, later, &Default::default())
        .await
        .unwrap();
    // Tokens 1 and 2 are used and past their own expiry; the purge keeps them.
    store.purge(later, later - hour).await.unwrap();
    let replayed = store
        .rotate_refresh_token(&[1; 32], &[4; 32], later + hour, later, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        replayed,
        Rotation::Reused {
            session_id: session.id,
            user_id: user.id
        }
    );
}

async fn a_change_whose_caller_gives_up_still_finishes_and_leaves_clean_connections(
    backend: Backend,
) {
    let (store, db) = open(backend).await;
    let user = store
        .create_user(&new_user("judy"), &Default::default())
        .await
        .unwrap();
    let sessions: Vec<_> = (0..40u8)
        .map(|i| session_for(user.id, i, Duration::days(1)))
        .collect();
    // Callers that give up at every point of the transaction (a client hanging up).
    for (i, session) in sessions.iter().enumerate() {
        let patience = std::time::Duration::from_micros(25 * i as u64);
        let _ = tokio::time::timeout(patience, store.create_session(session, &Default::default()))
            .await;
    }
    // A second pool sees only what was committed; the abandoned changes
    // finish on their own, however loaded the machine (within reason).
    let observer = store::connect(&db.url.parse::<DatabaseUrl>().unwrap())
        .await
        .unwrap();
    let now = clock::now();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for session in &sessions {
        while observer
            .session_user(session.id, now)
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "every session was created"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Statements on the first pool's connections commit: none was left inside a transaction.
    for (i, session) in sessions.iter().enumerate() {
        let revoked = store
            .revoke_session_by_refresh(&[i as u8; 32], now, &Default::default())
            .await
            .unwrap();
        assert_eq!(revoked, Some(session.id));
        assert!(
            observer
                .session_user(session.id, now)
                .await
                .unwrap()
                .is_none()
        );
    }
}

async fn live_sessions_answers_for_many_sessions_in_one_call(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = store
        .create_user(&new_user("kim"), &Default::default())
        .await
        .unwrap();
    let bob = store
        .create_user(&new_user("lee"), &Default::default())
        .await
        .unwrap();
    let sessions: Vec<_> = (0..6u8)
        .map(|i| {
            session_for(
                if i % 2 == 0 { alice.id } else { bob.id },
                i,
                Duration::days(1),
            )
        })
        .collect();
    for s in &sessions {
        store.create_session(s, &Default::default()).await.unwrap();
    }
    let now = clock::now();
    store
        .revoke_session_by_refresh(&[0; 32], now, &Default::default())
        .await
        .unwrap();
    let changes = UserChanges {
        is_active: Some(false),
        roles: None,
        email_verified: None,
        ..Default::default()
    };
    store
        .update_user(bob.id, &changes, now, &Default::default())
        .await
        .unwrap();

    let mut ids: Vec<Uuid> = sessions.iter().map(|s| s.id).collect();
    ids.push(Uuid::now_v7()); // unknown
    let live = store.live_sessions(&ids, clock::now()).await.unwrap();
    let mut found: Vec<_> = live.iter().map(|(id, user)| (*id, user.id)).collect();
    found.sort();
    // Alice's sessions 2 and 4 are live; 0 was revoked; Bob is disabled.
    assert_eq!(
        found,
        vec![(sessions[2].id, alice.id), (sessions[4].id, alice.id)]
    );
    assert_eq!(live[0].1, alice);
    assert!(
        store
            .live_sessions(&[], clock::now())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Runs statements on a connection of its own, outside the store.
async fn run_sql(db: &TestDb, statements: String) {
    use sqlx::Connection;
    let sql = sqlx::raw_sql(sqlx::AssertSqlSafe(statements));
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sql.execute(&mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sql.execute(&mut conn).await.unwrap();
        }
    }
}

/// A timestamp column of the one row `from` selects, as stored, in
/// milliseconds since the Unix epoch.
async fn stored_millis(db: &TestDb, column: &str, from: &str) -> i64 {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            let (kind, ms): (String, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT typeof({column}), {column} FROM {from}"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap();
            assert_eq!(kind, "integer", "{column} of {from}");
            ms
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT (EXTRACT(EPOCH FROM {column}) * 1000)::BIGINT FROM {from}"
            )))
            .fetch_one(&mut conn)
            .await
            .unwrap()
        }
    }
}

async fn timestamps_round_trip_to_the_millisecond_in_the_stored_form(backend: Backend) {
    let (store, db) = open(backend).await;
    let created_at = time::macros::datetime!(2026-01-02 03:04:05.678 UTC);
    let session_end = time::macros::datetime!(2100-01-01 00:00:00.001 UTC);
    let mut user = new_user("mila");
    user.created_at = created_at;
    store.create_user(&user, &Default::default()).await.unwrap();
    assert_eq!(
        store.get_user(user.id).await.unwrap().unwrap().created_at,
        created_at
    );
    let mut first = key("first");
    first.created_at = created_at;
    first.activates_at = created_at;
    assert!(
        store
            .insert_signing_key(&first, always(), &Default::default())
            .await
            .unwrap()
    );
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys[0].created_at, created_at);
    assert_eq!(keys[0].activates_at, created_at);
    let mut session = session_for(user.id, 1, Duration::days(1));
    session.expires_at = session_end;
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    let rotated = store
        .rotate_refresh_token(
            &[1; 32],
            &[2; 32],
            session_end,
            clock::now(),
            &Default::default(),
        )
        .await
        .unwrap();
    match rotated {
        Rotation::Rotated {
            session_expires_at, ..
        } => assert_eq!(session_expires_at, session_end),
        other => panic!("expected a rotation, got {other:?}"),
    }

    // Stored as ever: INTEGER milliseconds on SQLite, timestamptz on PostgreSQL.
    let users = "users WHERE username_normalized = 'mila'";
    assert_eq!(
        stored_millis(&db, "created_at", users).await,
        1_767_323_045_678
    );
    assert_eq!(
        stored_millis(&db, "updated_at", users).await,
        1_767_323_045_678
    );
    assert_eq!(
        stored_millis(&db, "expires_at", "sessions").await,
        4_102_444_800_001
    );
    assert_eq!(
        stored_millis(&db, "created_at", "signing_keys").await,
        1_767_323_045_678
    );
}

async fn rows_written_with_plain_sql_read_back_through_the_store(backend: Backend) {
    let (store, db) = open(backend).await;
    let (user_id, session_id) = (Uuid::now_v7(), Uuid::now_v7());
    // Each database's own literals, as rows written before this build hold them.
    let sqlite = backend == Backend::Sqlite;
    let uuid = |id: Uuid| {
        if sqlite {
            format!("X'{}'", id.simple())
        } else {
            format!("'{id}'")
        }
    };
    let bytes = |hex: &str| {
        if sqlite {
            format!("X'{hex}'")
        } else {
            format!("'\\x{hex}'::BYTEA")
        }
    };
    let (yes, created, ends) = if sqlite {
        ("1", "1767323045678", "4102444800001")
    } else {
        (
            "TRUE",
            "'2026-01-02 03:04:05.678+00'",
            "'2100-01-01 00:00:00.001+00'",
        )
    };
    let (user, session) = (uuid(user_id), uuid(session_id));
    let token = bytes(&"07".repeat(32));
    run_sql(
        &db,
        format!(
            "INSERT INTO users (id, username, username_normalized, email, email_normalized, \
             email_verified, password_hash, roles, is_active, created_at, updated_at) \
             VALUES ({user}, 'Olga', 'olga', NULL, NULL, {yes}, 'hash', 'admin,user', {yes}, \
             {created}, {created}); \
             INSERT INTO sessions (id, user_id, created_at, expires_at) \
             VALUES ({session}, {user}, {created}, {ends}); \
             INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
             VALUES ({token}, {session}, {created}, {ends}); \
             INSERT INTO signing_keys (kid, algorithm, secret, created_at, activates_at) \
             VALUES ('old', 'HS256', {secret}, {created}, {created});",
            secret = bytes("0102"),
        ),
    )
    .await;

    let created_at = time::macros::datetime!(2026-01-02 03:04:05.678 UTC);
    let expected = authgate::domain::User {
        id: user_id,
        username: Some("Olga".into()),
        email: None,
        email_verified: true,
        roles: Roles::new([Role::admin(), Role::user()]),
        is_active: true,
        created_at,
    };
    assert_eq!(store.get_user(user_id).await.unwrap().unwrap(), expected);
    let credentials = store.find_credentials("olga").await.unwrap().unwrap();
    assert_eq!(credentials.user, expected);
    assert_eq!(credentials.password_hash, "hash");
    let live = store
        .live_sessions(&[session_id], clock::now())
        .await
        .unwrap();
    assert_eq!(live, vec![(session_id, expected.clone())]);
    let rotated = store
        .rotate_refresh_token(
            &[7; 32],
            &[8; 32],
            clock::now() + Duration::hours(1),
            clock::now(),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        rotated,
        Rotation::Rotated {
            session_id,
            user: expected,
            session_expires_at: time::macros::datetime!(2100-01-01 00:00:00.001 UTC),
            auth: SessionAuth {
                level: "aal1".into(),
                methods: vec!["pwd".into()],
                at: created_at,
            },
            scope: None,
        }
    );
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(
        keys,
        vec![StoredKey {
            kid: "old".into(),
            algorithm: "HS256".into(),
            secret: vec![1, 2],
            sealed: false,
            public_jwk: None,
            created_at,
            activates_at: created_at,
            revoked_at: None,
        }]
    );
}

async fn a_users_live_sessions_are_listed_newest_first_and_end_one_by_one(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = store
        .create_user(&new_user("liv"), &Default::default())
        .await
        .unwrap();
    let bob = store
        .create_user(&new_user("lou"), &Default::default())
        .await
        .unwrap();
    let older = session_for(alice.id, 1, Duration::days(1));
    let mut newer = session_for(alice.id, 2, Duration::days(1));
    newer.created_at = older.created_at + Duration::seconds(1);
    let bobs = session_for(bob.id, 3, Duration::days(1));
    for s in [&older, &newer, &bobs] {
        store.create_session(s, &Default::default()).await.unwrap();
    }
    let now = clock::now();
    let listed = store.list_sessions(alice.id, now).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|s| s.id).collect();
    assert_eq!(ids, [newer.id, older.id]);
    assert_eq!(listed[0].user_agent.as_deref(), Some("agent 2"));
    assert_eq!(listed[0].ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(listed[0].last_used_at, None);
    // Another user's session cannot be ended through this user.
    let ended = store
        .revoke_session(
            alice.id,
            bobs.id,
            RevokeReason::EndedByUser,
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(!ended);
    assert!(store.session_user(bobs.id, now).await.unwrap().is_some());
    assert!(
        store
            .revoke_session(
                alice.id,
                older.id,
                RevokeReason::EndedByUser,
                now,
                &Default::default()
            )
            .await
            .unwrap()
    );
    let ids: Vec<_> = store
        .list_sessions(alice.id, now)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, [newer.id]);
    // A refresh marks the session as used.
    store
        .rotate_refresh_token(
            &[2; 32],
            &[9; 32],
            now + Duration::hours(1),
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    let listed = store.list_sessions(alice.id, now).await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(now));
}

async fn a_password_change_ends_every_session_but_the_one_kept(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("pat"), &Default::default())
        .await
        .unwrap();
    let kept = session_for(user.id, 1, Duration::days(1));
    let other = session_for(user.id, 2, Duration::days(1));
    store
        .create_session(&kept, &Default::default())
        .await
        .unwrap();
    store
        .create_session(&other, &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    assert!(
        store
            .change_password(
                user.id,
                "$argon2id$new",
                Some(kept.id),
                now,
                &Default::default()
            )
            .await
            .unwrap()
    );
    assert!(store.session_user(kept.id, now).await.unwrap().is_some());
    assert!(store.session_user(other.id, now).await.unwrap().is_none());
    let creds = store.get_credentials(user.id).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "$argon2id$new");
    assert!(
        !store
            .change_password(
                Uuid::now_v7(),
                "$argon2id$x",
                None,
                now,
                &Default::default()
            )
            .await
            .unwrap()
    );
}

async fn deleting_a_user_removes_its_sessions_but_never_the_last_admin(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("del"), &Default::default())
        .await
        .unwrap();
    let session = session_for(user.id, 1, Duration::days(1));
    store
        .create_session(&session, &Default::default())
        .await
        .unwrap();
    assert!(
        store
            .delete_user(user.id, &Default::default())
            .await
            .unwrap()
    );
    assert!(store.get_user(user.id).await.unwrap().is_none());
    assert!(
        store
            .session_user(session.id, clock::now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !store
            .delete_user(user.id, &Default::default())
            .await
            .unwrap(),
        "already gone"
    );
    // Its names are free again.
    store
        .create_user(&new_user("del"), &Default::default())
        .await
        .unwrap();

    let mut admin = new_user("boss");
    admin.roles = Roles::new([Role::user(), Role::admin()]);
    let admin = store
        .create_user(&admin, &Default::default())
        .await
        .unwrap();
    assert!(matches!(
        store.delete_user(admin.id, &Default::default()).await,
        Err(StoreError::LastAdmin)
    ));
    assert!(store.get_user(admin.id).await.unwrap().is_some());
}

async fn an_added_role_joins_the_roles_the_user_has_at_the_change(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("ada"), &Default::default())
        .await
        .unwrap();
    let staff = Role::parse("staff").unwrap();
    let set = UserChanges {
        roles: Some(Roles::new([Role::user(), staff.clone()])),
        ..Default::default()
    };
    store
        .update_user(user.id, &set, clock::now(), &Default::default())
        .await
        .unwrap();
    let promote = UserChanges {
        add_role: Some(Role::admin()),
        ..Default::default()
    };
    let updated = store
        .update_user(user.id, &promote, clock::now(), &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        updated.user.roles,
        Roles::new([Role::admin(), staff, Role::user()])
    );
    assert!(updated.sessions_ended);
}

async fn a_session_opens_only_while_the_credentials_it_was_checked_with_hold(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("otto"), &Default::default())
        .await
        .unwrap();
    let stale_hash = NewSession {
        password_hash: "$argon2id$other".into(),
        ..session_for(user.id, 1, Duration::days(1))
    };
    let stale_roles = NewSession {
        roles: Roles::new([Role::user(), Role::admin()]),
        ..session_for(user.id, 2, Duration::days(1))
    };
    for session in [&stale_hash, &stale_roles] {
        assert!(
            !store
                .create_session(session, &Default::default())
                .await
                .unwrap()
        );
        assert!(
            store
                .session_user(session.id, clock::now())
                .await
                .unwrap()
                .is_none()
        );
    }
    let fresh = session_for(user.id, 3, Duration::days(1));
    assert!(
        store
            .create_session(&fresh, &Default::default())
            .await
            .unwrap()
    );
    let disable = UserChanges {
        is_active: Some(false),
        ..Default::default()
    };
    store
        .update_user(user.id, &disable, clock::now(), &Default::default())
        .await
        .unwrap();
    assert!(
        !store
            .create_session(
                &session_for(user.id, 4, Duration::days(1)),
                &Default::default()
            )
            .await
            .unwrap()
    );
}

async fn a_hash_upgrade_never_undoes_a_password_change(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = store
        .create_user(&new_user("pia"), &Default::default())
        .await
        .unwrap();
    let now = clock::now();
    store
        .change_password(user.id, "$argon2id$changed", None, now, &Default::default())
        .await
        .unwrap();
    let upgraded = store
        .upgrade_password_hash(user.id, HASH, "$argon2id$upgraded-old", now)
        .await
        .unwrap();
    assert!(!upgraded);
    let creds = store.get_credentials(user.id).await.unwrap().unwrap();
    assert_eq!(creds.password_hash, "$argon2id$changed");
    assert!(
        store
            .upgrade_password_hash(user.id, "$argon2id$changed", "$argon2id$new", now)
            .await
            .unwrap()
    );
}

async fn instances_starting_together_store_one_signing_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let url = db.url.parse::<DatabaseUrl>().unwrap();
    let first = store::connect(&url).await.unwrap();
    first.migrate().await.unwrap();
    // Each "instance" has its own pools, as separate processes would.
    let mut instances = vec![first];
    for _ in 0..5 {
        instances.push(store::connect(&url).await.unwrap());
    }
    let starts = instances.iter().enumerate().map(|(i, store)| async move {
        store
            .insert_signing_key(&key(&format!("k{i}")), if_none(), &Default::default())
            .await
            .unwrap()
    });
    let inserted = futures::future::join_all(starts)
        .await
        .into_iter()
        .filter(|inserted| *inserted)
        .count();
    assert_eq!(inserted, 1);
    assert_eq!(instances[0].signing_keys().await.unwrap().len(), 1);
}

fn link(user: &NewUser, purpose: FlowPurpose, secret: u8, lifetime: Duration) -> Effects {
    let now = clock::now();
    Effects {
        token: Some(NewFlowToken {
            hash: [secret; 32],
            purpose,
            user_id: user.id,
            email: user.email.clone().unwrap(),
            created_at: now,
            expires_at: now + lifetime,
        }),
        mail: vec![mail_to(user.email.as_ref().unwrap().as_str())],
        audit: vec![
            AuditContext::default()
                .record(AuditKind::PasswordResetRequested, now)
                .user(user.id),
        ],
    }
}

fn mail_to(to: &str) -> OutboxMail {
    OutboxMail {
        id: Uuid::now_v7(),
        kind: "test",
        to: to.into(),
        subject: "Hello".into(),
        text: "a link".into(),
        created_at: clock::now(),
    }
}

async fn a_link_is_used_up_once_even_by_racing_redemptions(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = new_user("ursula");
    store.create_user(&user, &Default::default()).await.unwrap();
    store
        .apply(&link(
            &user,
            FlowPurpose::VerifyEmail,
            7,
            Duration::hours(1),
        ))
        .await
        .unwrap();
    let redeem = || {
        let store = store.clone();
        async move {
            store
                .redeem_flow_token(
                    &[7; 32],
                    FlowPurpose::VerifyEmail,
                    user.id,
                    &Redemption::VerifyEmail,
                    clock::now(),
                    &Effects::default(),
                )
                .await
                .unwrap()
        }
    };
    let outcomes = futures::future::join_all((0..8).map(|_| redeem())).await;
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, Redeemed::Done(u) if u.email_verified))
        .count();
    assert_eq!(done, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Redeemed::Done(_) | Redeemed::Invalid))
    );
    assert!(
        store
            .get_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .email_verified
    );
}

async fn a_link_is_bound_to_its_purpose_user_address_and_lifetime(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = new_user("victor");
    let other = new_user("wanda");
    store.create_user(&user, &Default::default()).await.unwrap();
    store
        .create_user(&other, &Default::default())
        .await
        .unwrap();
    store
        .apply(&link(
            &user,
            FlowPurpose::VerifyEmail,
            1,
            Duration::minutes(10),
        ))
        .await
        .unwrap();
    let now = clock::now();
    let found = store
        .find_flow_token(&[1; 32], FlowPurpose::VerifyEmail, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.user_id, user.id);
    assert_eq!(found.email, "victor@Example.com");
    let try_with = |purpose, user_id, at| {
        let store = store.clone();
        async move {
            store
                .redeem_flow_token(
                    &[1; 32],
                    purpose,
                    user_id,
                    &Redemption::VerifyEmail,
                    at,
                    &Effects::default(),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(
        try_with(FlowPurpose::ResetPassword, user.id, now).await,
        Redeemed::Invalid
    );
    assert_eq!(
        try_with(FlowPurpose::VerifyEmail, other.id, now).await,
        Redeemed::Invalid
    );
    assert_eq!(
        try_with(
            FlowPurpose::VerifyEmail,
            user.id,
            now + Duration::minutes(11)
        )
        .await,
        Redeemed::Invalid
    );
    assert!(
        store
            .find_flow_token(
                &[1; 32],
                FlowPurpose::VerifyEmail,
                now + Duration::minutes(11)
            )
            .await
            .unwrap()
            .is_none()
    );
    // The address changes before the link is used: the link is dead.
    let mut moved = link(&user, FlowPurpose::ChangeEmail, 2, Duration::minutes(10));
    moved.token.as_mut().unwrap().email = Email::parse("victor@elsewhere.org").unwrap();
    store.apply(&moved).await.unwrap();
    let changed = store
        .redeem_flow_token(
            &[2; 32],
            FlowPurpose::ChangeEmail,
            user.id,
            &Redemption::ChangeEmail,
            now,
            &Effects::default(),
        )
        .await
        .unwrap();
    let Redeemed::Done(changed) = changed else {
        panic!("{changed:?}")
    };
    assert_eq!(changed.email.as_deref(), Some("victor@elsewhere.org"));
    assert!(changed.email_verified);
    assert_eq!(
        try_with(FlowPurpose::VerifyEmail, user.id, now).await,
        Redeemed::Invalid,
        "a link to the old address is dead"
    );
    // Another account holds the address the link would move to.
    let mut taken = link(&user, FlowPurpose::ChangeEmail, 3, Duration::minutes(10));
    taken.token.as_mut().unwrap().email = other.email.clone().unwrap();
    store.apply(&taken).await.unwrap();
    let clash = store
        .redeem_flow_token(
            &[3; 32],
            FlowPurpose::ChangeEmail,
            user.id,
            &Redemption::ChangeEmail,
            now,
            &Effects::default(),
        )
        .await
        .unwrap();
    assert_eq!(clash, Redeemed::EmailTaken);
    assert_eq!(
        store
            .get_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .email
            .as_deref(),
        Some("victor@elsewhere.org")
    );
}

async fn a_newer_link_or_a_password_change_kills_older_links(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = new_user("xavier");
    store.create_user(&user, &Default::default()).await.unwrap();
    let now = clock::now();
    store
        .apply(&link(
            &user,
            FlowPurpose::ResetPassword,
            1,
            Duration::minutes(30),
        ))
        .await
        .unwrap();
    store
        .apply(&link(
            &user,
            FlowPurpose::ResetPassword,
            2,
            Duration::minutes(30),
        ))
        .await
        .unwrap();
    let find = |secret| {
        let store = store.clone();
        async move {
            store
                .find_flow_token(&[secret; 32], FlowPurpose::ResetPassword, now)
                .await
                .unwrap()
        }
    };
    assert!(find(1).await.is_none(), "the newer link replaces the older");
    assert!(find(2).await.is_some());
    store
        .change_password(user.id, HASH, None, now, &Effects::default())
        .await
        .unwrap();
    assert!(find(2).await.is_none(), "a password change kills the link");
}

async fn a_reset_sets_the_password_ends_every_session_and_verifies_the_address(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = new_user("yvonne");
    store.create_user(&user, &Default::default()).await.unwrap();
    let session = session_for(user.id, 9, Duration::days(1));
    assert!(
        store
            .create_session(&session, &Default::default())
            .await
            .unwrap()
    );
    store
        .apply(&link(
            &user,
            FlowPurpose::ResetPassword,
            4,
            Duration::minutes(30),
        ))
        .await
        .unwrap();
    let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3";
    let redeemed = store
        .redeem_flow_token(
            &[4; 32],
            FlowPurpose::ResetPassword,
            user.id,
            &Redemption::ResetPassword {
                password_hash: new_hash.into(),
            },
            clock::now(),
            &Effects::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(redeemed, Redeemed::Done(ref u) if u.email_verified),
        "{redeemed:?}"
    );
    let credentials = store.get_credentials(user.id).await.unwrap().unwrap();
    assert_eq!(credentials.password_hash, new_hash);
    assert!(
        store
            .session_user(session.id, clock::now())
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_failed_change_writes_neither_its_mail_nor_its_audit_events(backend: Backend) {
    let (store, _db) = open(backend).await;
    let first = new_user("zoe");
    store
        .create_user(&first, &Default::default())
        .await
        .unwrap();
    let mut clash = new_user("zoe");
    clash.email = Some(Email::parse("someone.else@example.com").unwrap());
    let effects = Effects {
        mail: vec![mail_to("someone.else@example.com")],
        audit: vec![
            AuditContext::default()
                .record(AuditKind::Signup, clock::now())
                .user(clash.id),
        ],
        token: None,
    };
    let refused = store.create_user(&clash, &effects).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict("username"))),
        "{refused:?}"
    );
    let mail = store.list_mail(None, 10, None).await.unwrap();
    assert!(mail.is_empty(), "{mail:?}");
    let events = store
        .list_audit(&AuditFilter::default(), 10, None)
        .await
        .unwrap();
    assert!(events.is_empty(), "{events:?}");
}

async fn racing_claims_share_out_the_outbox_and_each_message_once(backend: Backend) {
    let (store, _db) = open(backend).await;
    let effects = Effects {
        mail: (0..40)
            .map(|i| mail_to(&format!("m{i}@example.com")))
            .collect(),
        ..Effects::default()
    };
    store.apply(&effects).await.unwrap();
    let now = clock::now();
    let claim = |owner| {
        let store = store.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_mail(owner, 3, 5, now, now + Duration::minutes(5))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for mail in &batch {
                    assert_eq!(mail.attempts, 1);
                    store.mail_sent(mail.id, owner, now).await.unwrap();
                }
                mine.extend(batch.into_iter().map(|m| m.to));
            }
        }
    };
    let (a, b, c) = tokio::join!(
        claim(Uuid::new_v4()),
        claim(Uuid::new_v4()),
        claim(Uuid::new_v4())
    );
    let mut all: Vec<_> = a.into_iter().chain(b).chain(c).collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 40, "every message claimed");
    assert_eq!(all.len(), 40, "no message claimed twice");
    let listed = store
        .list_mail(Some(MailStatus::Sent), 100, None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 40);
}

async fn a_claim_that_runs_out_is_claimed_again_and_given_up_after_its_attempts(backend: Backend) {
    let (store, _db) = open(backend).await;
    store
        .apply(&Effects {
            mail: vec![mail_to("lost@example.com")],
            ..Effects::default()
        })
        .await
        .unwrap();
    let now = clock::now();
    let lease = Duration::minutes(5);
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        store
            .claim_mail(first, 10, 2, now, now + lease)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .claim_mail(second, 10, 2, now, now + lease)
            .await
            .unwrap()
            .is_empty(),
        "a held claim is not handed out again"
    );
    let later = now + lease + Duration::seconds(1);
    let again = store
        .claim_mail(second, 10, 2, later, later + lease)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "a claim that ran out is claimed again");
    assert_eq!(again[0].attempts, 2);
    // The first sender's late report no longer counts.
    store.mail_sent(again[0].id, first, later).await.unwrap();
    let pending = store
        .list_mail(Some(MailStatus::Pending), 10, None)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let last = later + lease + Duration::seconds(1);
    assert!(
        store
            .claim_mail(first, 10, 2, last, last + lease)
            .await
            .unwrap()
            .is_empty()
    );
    let failed = store
        .list_mail(Some(MailStatus::Failed), 10, None)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "out of attempts, given up");
    assert!(failed[0].last_error.is_some());
}

async fn a_purge_of_more_rows_than_one_batch_deletes_them_all(backend: Backend) {
    let (store, _db) = open(backend).await;
    let old = clock::now() - Duration::days(400);
    // Written in one change, as a change's events are: 12,001 rows, more
    // than two batches.
    let effects = Effects {
        audit: (0..12_001)
            .map(|i| {
                AuditContext::default().record(AuditKind::Login, old + Duration::milliseconds(i))
            })
            .collect(),
        ..Effects::default()
    };
    store.apply(&effects).await.unwrap();
    let kept = AuditContext::default().record(AuditKind::Signup, clock::now());
    store.record(&kept).await.unwrap();
    assert_eq!(
        store
            .purge_audit(clock::now() - Duration::days(1))
            .await
            .unwrap(),
        12_001
    );
    let left = store
        .list_audit(&AuditFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(left, vec![kept]);
}

async fn audit_events_page_newest_first_and_filter(backend: Backend) {
    let (store, _db) = open(backend).await;
    let user = Uuid::now_v7();
    let start = clock::now();
    let context = AuditContext {
        actor_id: Some(user),
        ip: Some("192.0.2.7".into()),
        user_agent: Some("agent".into()),
        request_id: Some("req-1".into()),
    };
    let mut written = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 {
            AuditKind::Login
        } else {
            AuditKind::Refresh
        };
        let record = context
            .record(kind, start + Duration::seconds(i))
            .user(user)
            .detail(format!("n{i}"));
        store.record(&record).await.unwrap();
        written.push(record);
    }
    store
        .record(&AuditContext::default().record(AuditKind::Signup, start))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let filter = AuditFilter {
            user_id: Some(user),
            ..AuditFilter::default()
        };
        let page = store.list_audit(&filter, 2, before).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|e| e.id);
        seen.extend(page);
    }
    written.reverse();
    assert_eq!(
        seen, written,
        "newest first, each once, read back as written"
    );
    let logins = store
        .list_audit(
            &AuditFilter {
                kind: Some(AuditKind::Login),
                since: Some(start + Duration::seconds(1)),
                ..AuditFilter::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert_eq!(
        store
            .purge_audit(start + Duration::seconds(3))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .list_audit(&AuditFilter::default(), 10, None)
            .await
            .unwrap()
            .len(),
        2
    );
}

// Second factors: TOTP factors, recovery codes and login challenges.

/// The fields of a factor, to compare whole factors (`Factor` has no `PartialEq`).
type FactorFields = (
    Uuid,
    Uuid,
    FactorKind,
    String,
    Option<Vec<u8>>,
    Option<OffsetDateTime>,
    Option<i64>,
    Option<OffsetDateTime>,
    OffsetDateTime,
);

fn fields(factor: &Factor) -> FactorFields {
    (
        factor.id,
        factor.user_id,
        factor.kind,
        factor.name.clone(),
        factor.secret.clone(),
        factor.confirmed_at,
        factor.last_used_step,
        factor.last_used_at,
        factor.created_at,
    )
}

fn all_fields(factors: &[Factor]) -> Vec<FactorFields> {
    factors.iter().map(fields).collect()
}

fn ids(factors: &[Factor]) -> Vec<Uuid> {
    factors.iter().map(|f| f.id).collect()
}

/// A new, unconfirmed TOTP factor of the user, with a secret of every byte
/// value a sealed secret may hold.
fn totp(user_id: Uuid, name: &str, created_at: OffsetDateTime) -> Factor {
    Factor {
        id: Uuid::now_v7(),
        user_id,
        kind: FactorKind::Totp,
        name: name.into(),
        secret: Some((0..=255u8).rev().chain([0, 0, 1]).collect()),
        confirmed_at: None,
        last_used_step: None,
        last_used_at: None,
        created_at,
    }
}

/// A stored user's id.
async fn user_id(store: &Arc<dyn Store>, name: &str) -> Uuid {
    store
        .create_user(&new_user(name), &Default::default())
        .await
        .unwrap()
        .id
}

/// Long ago enough that no enrolment of a test counts as stale.
fn never_stale() -> OffsetDateTime {
    clock::now() - Duration::days(3650)
}

/// Adds a factor and confirms it at `step` with the recovery codes `codes`.
async fn confirmed_totp(store: &Arc<dyn Store>, user_id: Uuid, step: i64, codes: &[u8]) -> Factor {
    let factor = totp(user_id, "phone", clock::now());
    store.add_factor(&factor, never_stale()).await.unwrap();
    let hashes: Vec<[u8; 32]> = codes.iter().map(|c| [*c; 32]).collect();
    assert!(
        store
            .confirm_factor(
                user_id,
                factor.id,
                step,
                clock::now(),
                &hashes,
                false,
                &Default::default()
            )
            .await
            .unwrap()
    );
    factor
}

fn challenge(token: u8, user_id: Uuid, lifetime: Duration) -> NewChallenge {
    let now = clock::now();
    NewChallenge {
        token_hash: [token; 32],
        user_id,
        password_hash: format!("{HASH}{token}"),
        created_at: now,
        expires_at: now + lifetime,
    }
}

async fn every_audit_event(store: &Arc<dyn Store>) -> Vec<AuditRecord> {
    store
        .list_audit(&AuditFilter::default(), 100, None)
        .await
        .unwrap()
}

async fn an_added_factor_is_listed_whole_oldest_first_and_only_for_its_user(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "fay").await;
    let bob = user_id(&store, "gus").await;
    let start = time::macros::datetime!(2026-03-04 05:06:07.891 UTC);
    let stale_before = start - Duration::days(1);
    // Added newest first: the listing orders by creation, not by insertion.
    let newer = totp(alice, "laptop", start + Duration::seconds(10));
    let mut older = totp(alice, "phone", start);
    older.secret = None;
    let bobs = totp(bob, "phone", start + Duration::seconds(5));
    store.add_factor(&newer, stale_before).await.unwrap();
    store.add_factor(&bobs, stale_before).await.unwrap();
    store.add_factor(&older, stale_before).await.unwrap();

    let listed = store.factors(alice).await.unwrap();
    assert_eq!(all_fields(&listed), vec![fields(&older), fields(&newer)]);
    assert_eq!(
        listed[1].secret.as_deref().map(<[u8]>::len),
        Some(259),
        "every byte of the secret round-trips"
    );
    assert_eq!(listed[0].confirmed_at, None);
    assert_eq!(listed[1].last_used_step, None);
    assert_eq!(
        all_fields(&store.factors(bob).await.unwrap()),
        vec![fields(&bobs)]
    );
    assert!(store.factors(Uuid::now_v7()).await.unwrap().is_empty());
}

async fn adding_a_factor_drops_only_the_users_stale_unconfirmed_enrolments(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "hal").await;
    let bob = user_id(&store, "ida").await;
    let now = clock::now();
    let stale_before = now - Duration::hours(1);
    let stale = totp(alice, "abandoned", now - Duration::hours(2));
    let confirmed = totp(alice, "phone", now - Duration::hours(3));
    let at_the_limit = totp(alice, "at the limit", stale_before);
    let fresh = totp(alice, "pending", now - Duration::minutes(5));
    let bobs_stale = totp(bob, "abandoned", now - Duration::hours(2));
    for factor in [&stale, &confirmed, &at_the_limit, &fresh, &bobs_stale] {
        store.add_factor(factor, never_stale()).await.unwrap();
    }
    assert!(
        store
            .confirm_factor(alice, confirmed.id, 1, now, &[], false, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.factors(alice).await.unwrap().len(), 4);

    let added = totp(alice, "new", now);
    store.add_factor(&added, stale_before).await.unwrap();
    assert_eq!(
        ids(&store.factors(alice).await.unwrap()),
        vec![confirmed.id, at_the_limit.id, fresh.id, added.id],
        "only the unconfirmed enrolment created before stale_before went"
    );
    assert_eq!(
        ids(&store.factors(bob).await.unwrap()),
        vec![bobs_stale.id],
        "another user's enrolments are not touched"
    );
}

async fn a_factor_is_confirmed_once_with_its_recovery_codes_and_audit_event(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "jan").await;
    let bob = user_id(&store, "kai").await;
    let factor = totp(alice, "phone", clock::now());
    store.add_factor(&factor, never_stale()).await.unwrap();
    let now = clock::now() + Duration::seconds(1);
    let codes = [[1; 32], [2; 32], [3; 32]];
    let event = |who: Uuid, what: &str| {
        Effects::audit(
            AuditContext::default()
                .record(AuditKind::MfaEnrolled, now)
                .user(who)
                .detail(what),
        )
    };

    // Another user's factor: nothing happens, not even the effects.
    assert!(
        !store
            .confirm_factor(bob, factor.id, 7, now, &codes, false, &event(bob, "theft"))
            .await
            .unwrap()
    );
    assert_eq!(
        all_fields(&store.factors(alice).await.unwrap()),
        vec![fields(&factor)]
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 0);
    assert!(every_audit_event(&store).await.is_empty());
    assert!(
        !store
            .confirm_factor(
                alice,
                Uuid::now_v7(),
                7,
                now,
                &codes,
                false,
                &Default::default()
            )
            .await
            .unwrap(),
        "an unknown factor"
    );

    let confirmed = event(alice, "mfa enabled");
    assert!(
        store
            .confirm_factor(alice, factor.id, 1000, now, &codes, false, &confirmed)
            .await
            .unwrap()
    );
    let expected = Factor {
        confirmed_at: Some(now),
        last_used_step: Some(1000),
        last_used_at: Some(now),
        ..factor.clone()
    };
    assert_eq!(
        all_fields(&store.factors(alice).await.unwrap()),
        vec![fields(&expected)]
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 3);
    assert_eq!(every_audit_event(&store).await, confirmed.audit);

    // Confirmed already: a second confirmation changes nothing.
    let later = now + Duration::minutes(1);
    assert!(
        !store
            .confirm_factor(
                alice,
                factor.id,
                2000,
                later,
                &[[9; 32]],
                false,
                &event(alice, "again")
            )
            .await
            .unwrap()
    );
    assert_eq!(
        all_fields(&store.factors(alice).await.unwrap()),
        vec![fields(&expected)]
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 3);
    assert!(
        !store
            .use_recovery_code(alice, &[9; 32], later)
            .await
            .unwrap()
    );
    assert_eq!(every_audit_event(&store).await, confirmed.audit);
}

async fn a_totp_step_is_spent_once_and_only_forward_on_a_confirmed_factor(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "lou").await;
    let pending = totp(alice, "pending", clock::now());
    store.add_factor(&pending, never_stale()).await.unwrap();
    let now = clock::now() + Duration::seconds(1);
    assert!(
        !store.use_totp_step(pending.id, 5, now).await.unwrap(),
        "an unconfirmed factor spends no step"
    );
    assert_eq!(store.factors(alice).await.unwrap()[0].last_used_step, None);
    assert!(!store.use_totp_step(Uuid::now_v7(), 5, now).await.unwrap());

    let factor = confirmed_totp(&store, alice, 100, &[]).await;
    assert!(
        !store.use_totp_step(factor.id, 100, now).await.unwrap(),
        "the step the confirmation used is spent"
    );
    assert!(!store.use_totp_step(factor.id, 99, now).await.unwrap());
    assert!(store.use_totp_step(factor.id, 101, now).await.unwrap());
    let spent = store.factors(alice).await.unwrap();
    let spent = spent.iter().find(|f| f.id == factor.id).unwrap();
    assert_eq!(spent.last_used_step, Some(101));
    assert_eq!(spent.last_used_at, Some(now));
    assert!(!store.use_totp_step(factor.id, 101, now).await.unwrap());
    assert!(!store.use_totp_step(factor.id, 100, now).await.unwrap());
    assert!(
        store.use_totp_step(factor.id, 103, now).await.unwrap(),
        "a step may be skipped"
    );
    assert!(!store.use_totp_step(factor.id, 102, now).await.unwrap());
    let spent = store.factors(alice).await.unwrap();
    let spent = spent.iter().find(|f| f.id == factor.id).unwrap();
    assert_eq!(spent.last_used_step, Some(103));
}

async fn of_racing_uses_of_one_totp_step_exactly_one_succeeds(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "max").await;
    let factor = confirmed_totp(&store, alice, 100, &[]).await;
    let tasks = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .use_totp_step(factor.id, 200, clock::now())
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<bool> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|won| **won).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        store.factors(alice).await.unwrap()[0].last_used_step,
        Some(200)
    );
}

async fn a_recovery_code_is_spent_once_and_only_by_its_user(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "ned").await;
    let bob = user_id(&store, "ola").await;
    confirmed_totp(&store, alice, 1, &[1, 2, 3]).await;
    confirmed_totp(&store, bob, 1, &[4]).await;
    let now = clock::now();
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 3);
    assert!(store.use_recovery_code(alice, &[1; 32], now).await.unwrap());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    assert!(
        !store.use_recovery_code(alice, &[1; 32], now).await.unwrap(),
        "spent"
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    assert!(
        !store.use_recovery_code(bob, &[2; 32], now).await.unwrap(),
        "another user's code"
    );
    assert!(
        !store.use_recovery_code(alice, &[4; 32], now).await.unwrap(),
        "another user's code"
    );
    assert!(!store.use_recovery_code(alice, &[9; 32], now).await.unwrap());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 1);
    assert!(store.use_recovery_code(alice, &[3; 32], now).await.unwrap());
    assert!(store.use_recovery_code(bob, &[4; 32], now).await.unwrap());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 1);
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 0);
}

async fn of_racing_uses_of_one_recovery_code_exactly_one_succeeds(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "pia").await;
    confirmed_totp(&store, alice, 1, &[1, 2]).await;
    let tasks = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .use_recovery_code(alice, &[1; 32], clock::now())
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<bool> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|won| **won).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 1);
}

async fn replacing_recovery_codes_voids_every_old_one(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "quin").await;
    let bob = user_id(&store, "rae").await;
    confirmed_totp(&store, alice, 1, &[1, 2]).await;
    confirmed_totp(&store, bob, 1, &[2]).await;
    let now = clock::now();
    assert!(store.use_recovery_code(alice, &[1; 32], now).await.unwrap());
    let effects = Effects::audit(
        AuditContext::default()
            .record(AuditKind::RecoveryCodesRegenerated, now)
            .user(alice),
    );
    store
        .replace_recovery_codes(alice, &[[5; 32], [6; 32], [7; 32]], &effects)
        .await
        .unwrap();
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 3);
    assert_eq!(every_audit_event(&store).await, effects.audit);
    assert!(
        !store.use_recovery_code(alice, &[2; 32], now).await.unwrap(),
        "an unused old code"
    );
    assert!(
        !store.use_recovery_code(alice, &[1; 32], now).await.unwrap(),
        "a used old code"
    );
    assert!(store.use_recovery_code(alice, &[5; 32], now).await.unwrap());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    assert_eq!(
        store.recovery_codes_left(bob).await.unwrap(),
        1,
        "another user's codes stay"
    );
    assert!(store.use_recovery_code(bob, &[2; 32], now).await.unwrap());
}

async fn deleting_a_factor_takes_the_recovery_codes_only_with_the_last_confirmed_one(
    backend: Backend,
) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "sam").await;
    let bob = user_id(&store, "tia").await;
    let first = confirmed_totp(&store, alice, 1, &[1, 2, 3]).await;
    // Confirming the second factor replaces the codes.
    let second = confirmed_totp(&store, alice, 1, &[4, 5]).await;
    let pending = totp(alice, "pending", clock::now() + Duration::seconds(1));
    store.add_factor(&pending, never_stale()).await.unwrap();
    confirmed_totp(&store, bob, 1, &[6]).await;
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    let deleted = |what: &str| {
        Effects::audit(
            AuditContext::default()
                .record(AuditKind::MfaRemoved, clock::now())
                .user(alice)
                .detail(what),
        )
    };

    let theft = deleted("by bob");
    assert!(
        !store.delete_factor(bob, first.id, &theft).await.unwrap(),
        "another user's factor"
    );
    assert_eq!(
        ids(&store.factors(alice).await.unwrap()),
        vec![first.id, second.id, pending.id]
    );
    assert!(every_audit_event(&store).await.is_empty());

    let one = deleted("first");
    assert!(store.delete_factor(alice, first.id, &one).await.unwrap());
    assert!(
        !store
            .delete_factor(alice, first.id, &Default::default())
            .await
            .unwrap(),
        "gone already"
    );
    assert_eq!(
        ids(&store.factors(alice).await.unwrap()),
        vec![second.id, pending.id]
    );
    assert_eq!(
        store.recovery_codes_left(alice).await.unwrap(),
        2,
        "a confirmed factor is left: the codes stay"
    );
    assert_eq!(every_audit_event(&store).await, one.audit);

    assert!(
        store
            .delete_factor(alice, second.id, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(ids(&store.factors(alice).await.unwrap()), vec![pending.id]);
    assert_eq!(
        store.recovery_codes_left(alice).await.unwrap(),
        0,
        "only an unconfirmed factor is left: the codes go"
    );
    assert!(
        !store
            .use_recovery_code(alice, &[4; 32], clock::now())
            .await
            .unwrap()
    );
    assert_eq!(
        store.recovery_codes_left(bob).await.unwrap(),
        1,
        "another user's codes stay"
    );
    assert_eq!(store.factors(bob).await.unwrap().len(), 1);
}

async fn deleting_every_factor_removes_the_codes_and_counts_the_factors(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "uma").await;
    let bob = user_id(&store, "vic").await;
    confirmed_totp(&store, alice, 1, &[1]).await;
    confirmed_totp(&store, alice, 1, &[2, 3]).await;
    store
        .add_factor(&totp(alice, "pending", clock::now()), never_stale())
        .await
        .unwrap();
    let bobs = confirmed_totp(&store, bob, 1, &[4]).await;
    let effects = Effects::audit(
        AuditContext::default()
            .record(AuditKind::MfaReset, clock::now())
            .user(alice),
    );
    assert_eq!(
        store
            .delete_factors(alice, clock::now(), &effects)
            .await
            .unwrap(),
        3
    );
    assert!(store.factors(alice).await.unwrap().is_empty());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
    assert_eq!(every_audit_event(&store).await, effects.audit);
    assert_eq!(
        store
            .delete_factors(alice, clock::now(), &Default::default())
            .await
            .unwrap(),
        0
    );
    assert_eq!(ids(&store.factors(bob).await.unwrap()), vec![bobs.id]);
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 1);
}

async fn a_challenge_counts_each_attempt_up_to_its_maximum(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "wes").await;
    let new = challenge(1, alice, Duration::minutes(5));
    store.create_challenge(&new).await.unwrap();
    let now = clock::now();
    for attempts in 1..=3 {
        assert_eq!(
            store.attempt_challenge(&[1; 32], now, 3).await.unwrap(),
            Some(Attempt {
                user_id: alice,
                password_hash: new.password_hash.clone(),
                attempts,
                created_at: new.created_at,
            })
        );
    }
    assert_eq!(
        store.attempt_challenge(&[1; 32], now, 3).await.unwrap(),
        None,
        "out of attempts"
    );
    assert_eq!(
        store.attempt_challenge(&[1; 32], now, 3).await.unwrap(),
        None
    );
    assert_eq!(
        store.attempt_challenge(&[2; 32], now, 3).await.unwrap(),
        None,
        "an unknown challenge"
    );
}

async fn a_challenge_names_its_user_without_counting_an_attempt(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "yara").await;
    let new = challenge(1, alice, Duration::minutes(5));
    store.create_challenge(&new).await.unwrap();
    let now = clock::now();
    for _ in 0..5 {
        assert_eq!(
            store.challenge_user(&[1; 32], now).await.unwrap(),
            Some(alice)
        );
    }
    let attempt = store.attempt_challenge(&[1; 32], now, 5).await.unwrap();
    assert_eq!(
        attempt.map(|a| a.attempts),
        Some(1),
        "reading counted nothing"
    );
    assert_eq!(store.challenge_user(&[2; 32], now).await.unwrap(), None);
    assert_eq!(
        store
            .challenge_user(&[1; 32], new.expires_at)
            .await
            .unwrap(),
        None,
        "expired"
    );
}

async fn a_challenge_is_dead_from_its_expiry_on(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "xia").await;
    let new = challenge(1, alice, Duration::minutes(5));
    store.create_challenge(&new).await.unwrap();
    let just_before = new.expires_at - Duration::milliseconds(1);
    assert_eq!(
        store
            .attempt_challenge(&[1; 32], just_before, 5)
            .await
            .unwrap()
            .map(|a| a.attempts),
        Some(1)
    );
    assert_eq!(
        store
            .attempt_challenge(&[1; 32], new.expires_at, 5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .attempt_challenge(&[1; 32], new.expires_at + Duration::hours(1), 5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .attempt_challenge(&[1; 32], just_before, 5)
            .await
            .unwrap()
            .map(|a| a.attempts),
        Some(2),
        "attempts on an expired challenge are not counted"
    );
}

async fn a_challenge_ends_once_and_then_takes_no_attempt(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "yan").await;
    store
        .create_challenge(&challenge(1, alice, Duration::minutes(5)))
        .await
        .unwrap();
    store
        .create_challenge(&challenge(2, alice, Duration::minutes(5)))
        .await
        .unwrap();
    let now = clock::now();
    assert!(store.end_challenge(&[1; 32]).await.unwrap());
    assert!(
        !store.end_challenge(&[1; 32]).await.unwrap(),
        "gone already"
    );
    assert!(!store.end_challenge(&[3; 32]).await.unwrap(), "unknown");
    assert_eq!(
        store.attempt_challenge(&[1; 32], now, 5).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .attempt_challenge(&[2; 32], now, 5)
            .await
            .unwrap()
            .map(|a| (a.user_id, a.attempts)),
        Some((alice, 1)),
        "another challenge lives on"
    );
}

async fn racing_attempts_on_a_challenge_each_count_and_stop_at_the_maximum(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "zed").await;
    store
        .create_challenge(&challenge(1, alice, Duration::minutes(5)))
        .await
        .unwrap();
    let now = clock::now();
    let tasks = (0..10).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.attempt_challenge(&[1; 32], now, 5).await.unwrap() })
    });
    let outcomes: Vec<Option<Attempt>> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut counts: Vec<u32> = outcomes.iter().flatten().map(|a| a.attempts).collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2, 3, 4, 5], "{outcomes:?}");
    assert_eq!(
        store.attempt_challenge(&[1; 32], now, 5).await.unwrap(),
        None
    );
}

async fn purge_deletes_expired_challenges_and_keeps_live_ones(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "abe").await;
    let short = challenge(1, alice, Duration::minutes(1));
    let exact = challenge(2, alice, Duration::minutes(2));
    let long = challenge(3, alice, Duration::minutes(10));
    for c in [&short, &exact, &long] {
        store.create_challenge(c).await.unwrap();
    }
    let later = exact.expires_at;
    assert_eq!(
        store
            .purge(later, later - Duration::hours(1))
            .await
            .unwrap(),
        2,
        "the challenges expired by then, that one included whose expiry it is"
    );
    assert_eq!(count_rows(&db, "mfa_challenges").await, 1);
    // Asked at a time both purged challenges were still live: they are gone.
    let earlier = short.created_at;
    assert_eq!(
        store.attempt_challenge(&[1; 32], earlier, 5).await.unwrap(),
        None
    );
    assert_eq!(
        store.attempt_challenge(&[2; 32], earlier, 5).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .attempt_challenge(&[3; 32], later, 5)
            .await
            .unwrap()
            .map(|a| a.attempts),
        Some(1)
    );
}

async fn deleting_a_user_removes_its_factors_codes_and_challenges(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "bea").await;
    let bob = user_id(&store, "cal").await;
    for user in [alice, bob] {
        confirmed_totp(&store, user, 1, &[1, 2]).await;
        store
            .add_factor(&totp(user, "pending", clock::now()), never_stale())
            .await
            .unwrap();
    }
    store
        .create_challenge(&challenge(1, alice, Duration::minutes(5)))
        .await
        .unwrap();
    store
        .create_challenge(&challenge(2, bob, Duration::minutes(5)))
        .await
        .unwrap();
    assert_eq!(count_rows(&db, "mfa_factors").await, 4);
    assert_eq!(count_rows(&db, "recovery_codes").await, 4);
    assert_eq!(count_rows(&db, "mfa_challenges").await, 2);
    assert!(store.delete_user(alice, &Default::default()).await.unwrap());
    assert!(store.factors(alice).await.unwrap().is_empty());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
    // Nothing of hers is left behind, in any table; Bob keeps his.
    assert_eq!(count_rows(&db, "mfa_factors").await, 2);
    assert_eq!(count_rows(&db, "recovery_codes").await, 2);
    assert_eq!(count_rows(&db, "mfa_challenges").await, 1);
    assert_eq!(store.factors(bob).await.unwrap().len(), 2);
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 2);
    let now = clock::now();
    assert_eq!(
        store.attempt_challenge(&[1; 32], now, 5).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .attempt_challenge(&[2; 32], now, 5)
            .await
            .unwrap()
            .map(|a| a.user_id),
        Some(bob)
    );
}

// Passkeys (WebAuthn credentials) and their ceremonies.

/// A ceremony started a second ago, live for `lifetime` from its start.
fn ceremony(
    purpose: CeremonyPurpose,
    user_id: Option<Uuid>,
    state: &str,
    lifetime: Duration,
) -> Ceremony {
    let created_at = clock::now() - Duration::seconds(1);
    Ceremony {
        id: Uuid::now_v7(),
        purpose,
        user_id,
        state: state.into(),
        created_at,
        expires_at: created_at + lifetime,
    }
}

/// A new passkey of the user, never used.
fn passkey(
    user_id: Uuid,
    credential_id: &[u8],
    name: &str,
    created_at: OffsetDateTime,
) -> StoredPasskey {
    StoredPasskey {
        id: Uuid::now_v7(),
        user_id,
        credential_id: credential_id.to_vec(),
        credential: format!(r#"{{"cred_id":{credential_id:?},"counter":0,"note":"ключ \"☃\""}}"#),
        name: name.into(),
        created_at,
        last_used_at: None,
    }
}

/// An audit event of the user, as the effects of a passkey change.
fn passkey_event(kind: AuditKind, user_id: Uuid, what: &str) -> Effects {
    Effects::audit(
        AuditContext::default()
            .record(kind, clock::now())
            .user(user_id)
            .detail(what),
    )
}

async fn a_ceremony_is_taken_whole_once_and_only_for_its_purpose(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "dot").await;
    let register = ceremony(
        CeremonyPurpose::Register,
        Some(alice),
        r#"{"rs":{"challenge":"AP8A","policy":"required"},"note":"ключ ☃"}"#,
        Duration::minutes(5),
    );
    let login = ceremony(
        CeremonyPurpose::Login,
        None,
        r#"{"ast":{"challenge":"/wD/"}}"#,
        Duration::minutes(5),
    );
    let second = ceremony(
        CeremonyPurpose::SecondFactor,
        Some(alice),
        "{}",
        Duration::minutes(5),
    );
    for c in [&register, &login, &second] {
        store.add_ceremony(c).await.unwrap();
    }
    let now = clock::now();

    // Asked for with another purpose: not given, and not taken away either.
    for (c, wrong) in [
        (&register, CeremonyPurpose::Login),
        (&register, CeremonyPurpose::SecondFactor),
        (&login, CeremonyPurpose::Register),
        (&second, CeremonyPurpose::Login),
    ] {
        assert_eq!(
            store.take_ceremony(c.id, wrong, now).await.unwrap(),
            None,
            "{:?} taken as {wrong:?}",
            c.purpose
        );
    }
    assert_eq!(
        count_rows(&db, "webauthn_ceremonies").await,
        3,
        "a take of the wrong purpose deletes nothing"
    );
    assert_eq!(
        store
            .take_ceremony(Uuid::now_v7(), CeremonyPurpose::Register, now)
            .await
            .unwrap(),
        None,
        "an unknown ceremony"
    );

    for c in [&register, &login, &second] {
        assert_eq!(
            store.take_ceremony(c.id, c.purpose, now).await.unwrap(),
            Some(c.clone()),
            "the ceremony comes back whole"
        );
        assert_eq!(
            store.take_ceremony(c.id, c.purpose, now).await.unwrap(),
            None,
            "taken already"
        );
    }
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 0);
}

async fn a_ceremony_is_dead_from_its_expiry_on_and_taken_away_all_the_same(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "eli").await;
    let live = ceremony(
        CeremonyPurpose::Login,
        Some(alice),
        "live",
        Duration::minutes(2),
    );
    let exact = ceremony(
        CeremonyPurpose::Login,
        Some(alice),
        "exact",
        Duration::minutes(2),
    );
    let old = ceremony(CeremonyPurpose::Register, None, "old", Duration::minutes(2));
    for c in [&live, &exact, &old] {
        store.add_ceremony(c).await.unwrap();
    }

    assert_eq!(
        store
            .take_ceremony(
                live.id,
                live.purpose,
                live.expires_at - Duration::milliseconds(1)
            )
            .await
            .unwrap(),
        Some(live.clone()),
        "live to the millisecond before its expiry"
    );
    assert_eq!(
        store
            .take_ceremony(exact.id, exact.purpose, exact.expires_at)
            .await
            .unwrap(),
        None,
        "dead at its expiry"
    );
    assert_eq!(
        store
            .take_ceremony(old.id, old.purpose, old.expires_at + Duration::hours(1))
            .await
            .unwrap(),
        None
    );
    // Asked again at a time they were live: a take of an expired one
    // took it away all the same.
    for c in [&exact, &old] {
        assert_eq!(
            store
                .take_ceremony(c.id, c.purpose, c.created_at)
                .await
                .unwrap(),
            None,
            "{}",
            c.state
        );
    }
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 0);
}

async fn of_racing_takes_of_one_ceremony_exactly_one_gets_it(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "fin").await;
    let c = ceremony(
        CeremonyPurpose::SecondFactor,
        Some(alice),
        r#"{"ast":{}}"#,
        Duration::minutes(5),
    );
    store.add_ceremony(&c).await.unwrap();
    let tasks = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .take_ceremony(c.id, CeremonyPurpose::SecondFactor, clock::now())
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<Option<Ceremony>> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let taken: Vec<&Ceremony> = outcomes.iter().flatten().collect();
    assert_eq!(taken, vec![&c], "{outcomes:?}");
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 0);
}

async fn an_added_passkey_reads_back_whole_oldest_first_and_only_for_its_user(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "gia").await;
    let bob = user_id(&store, "hub").await;
    let start = time::macros::datetime!(2026-03-04 05:06:07.891 UTC);
    // Every byte value, 0x00 and 0xff at either end included.
    let every_byte: Vec<u8> = [0x00]
        .into_iter()
        .chain(0..=255u8)
        .chain([0xff, 0x00])
        .collect();
    // Added newest first: the listing orders by creation, not by insertion.
    let newer = passkey(
        alice,
        &[0xff, 0x00, 0x01],
        "laptop ✓",
        start + Duration::seconds(10),
    );
    let older = passkey(alice, &every_byte, "YubiKey 5 \"NFC\"", start);
    let bobs = passkey(bob, &[0x00, 0xff], "phone", start + Duration::seconds(5));
    let enrolled = passkey_event(AuditKind::MfaEnrolled, alice, "passkey laptop");
    store
        .add_passkey(&newer, None, None, 20, &enrolled)
        .await
        .unwrap();
    store
        .add_passkey(&bobs, None, None, 20, &Default::default())
        .await
        .unwrap();
    store
        .add_passkey(&older, None, None, 20, &Default::default())
        .await
        .unwrap();
    assert_eq!(every_audit_event(&store).await, enrolled.audit);

    let listed = store.passkeys(alice).await.unwrap();
    assert_eq!(listed, vec![older.clone(), newer.clone()]);
    assert_eq!(
        listed[0].credential_id.len(),
        259,
        "every byte of the credential id round-trips"
    );
    assert_eq!(listed[1].last_used_at, None);
    assert_eq!(store.passkeys(bob).await.unwrap(), vec![bobs.clone()]);
    assert!(store.passkeys(Uuid::now_v7()).await.unwrap().is_empty());

    for p in [&older, &newer, &bobs] {
        assert_eq!(
            store
                .passkey_by_credential(&p.credential_id)
                .await
                .unwrap()
                .as_ref(),
            Some(p),
            "whoever's it is"
        );
    }
    for unknown in [
        &[0xff, 0x00][..],
        &[0xff, 0x00, 0x01, 0x00][..],
        &every_byte[..258],
        &[][..],
    ] {
        assert_eq!(
            store.passkey_by_credential(unknown).await.unwrap(),
            None,
            "{unknown:?} matches only whole"
        );
    }
}

async fn a_credential_id_stored_for_any_user_is_a_conflict_that_writes_nothing(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "ivy").await;
    let bob = user_id(&store, "jon").await;
    let first = passkey(alice, &[0x00, 0x2a, 0xff], "first", clock::now());
    store
        .add_passkey(&first, None, None, 20, &Default::default())
        .await
        .unwrap();

    for (who, name) in [(alice, "again"), (bob, "stolen")] {
        let clash = passkey(who, &first.credential_id, name, clock::now());
        let effects = passkey_event(AuditKind::MfaEnrolled, who, name);
        let refused = store.add_passkey(&clash, None, None, 20, &effects).await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("passkey"))),
            "{name}: {refused:?}"
        );
    }
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![first.clone()]);
    assert!(store.passkeys(bob).await.unwrap().is_empty());
    assert_eq!(
        store
            .passkey_by_credential(&first.credential_id)
            .await
            .unwrap(),
        Some(first.clone())
    );
    let events = every_audit_event(&store).await;
    assert!(events.is_empty(), "{events:?}");

    // The refusals left nothing behind that stops the next passkey.
    let other = passkey(bob, &[0x00, 0x2a], "other", clock::now());
    let enrolled = passkey_event(AuditKind::MfaEnrolled, bob, "other");
    store
        .add_passkey(&other, None, None, 20, &enrolled)
        .await
        .unwrap();
    assert_eq!(store.passkeys(bob).await.unwrap(), vec![other]);
    assert_eq!(every_audit_event(&store).await, enrolled.audit);
}

async fn using_a_passkey_records_its_credential_and_when(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "kit").await;
    let bob = user_id(&store, "lee").await;
    let created_at = clock::now() - Duration::days(1);
    let alices = passkey(alice, &[1, 0, 0xff], "phone", created_at);
    let bobs = passkey(bob, &[2, 0, 0xff], "phone", created_at);
    for p in [&alices, &bobs] {
        store
            .add_passkey(p, None, None, 20, &Default::default())
            .await
            .unwrap();
    }

    let now = clock::now();
    let counted = r#"{"cred_id":[1,0,255],"counter":1}"#;
    assert!(
        store
            .use_passkey(alices.id, &alices.credential, counted, now)
            .await
            .unwrap()
    );
    let used = StoredPasskey {
        credential: counted.into(),
        last_used_at: Some(now),
        ..alices.clone()
    };
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![used.clone()]);
    assert_eq!(
        store
            .passkey_by_credential(&alices.credential_id)
            .await
            .unwrap(),
        Some(used)
    );

    let later = now + Duration::minutes(1);
    let counted_again = r#"{"cred_id":[1,0,255],"counter":2}"#;
    // A login that read the record before the first use counted: refused,
    // the record stays.
    assert!(
        !store
            .use_passkey(alices.id, &alices.credential, counted_again, later)
            .await
            .unwrap(),
        "a stale read"
    );
    assert_eq!(store.passkeys(alice).await.unwrap()[0].credential, counted);
    assert!(
        store
            .use_passkey(alices.id, counted, counted_again, later)
            .await
            .unwrap()
    );
    let used_again = StoredPasskey {
        credential: counted_again.into(),
        last_used_at: Some(later),
        ..alices.clone()
    };
    assert_eq!(
        store.passkeys(alice).await.unwrap(),
        vec![used_again.clone()]
    );

    assert!(
        !store
            .use_passkey(Uuid::now_v7(), "{}", "{}", later)
            .await
            .unwrap(),
        "an unknown passkey"
    );
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![used_again]);
    assert_eq!(
        store.passkeys(bob).await.unwrap(),
        vec![bobs],
        "another user's passkey is not touched"
    );
}

async fn a_passkey_is_deleted_once_and_only_by_its_user_with_its_effects(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "mia").await;
    let bob = user_id(&store, "noa").await;
    let start = clock::now() - Duration::hours(1);
    let first = passkey(alice, &[1], "first", start);
    let second = passkey(alice, &[2], "second", start + Duration::seconds(1));
    let bobs = passkey(bob, &[3], "bob's", start);
    for p in [&first, &second, &bobs] {
        store
            .add_passkey(p, None, None, 20, &Default::default())
            .await
            .unwrap();
    }

    let theft = passkey_event(AuditKind::MfaRemoved, bob, "by bob");
    assert!(
        !store.delete_passkey(bob, first.id, &theft).await.unwrap(),
        "another user's passkey"
    );
    assert_eq!(
        store.passkeys(alice).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert!(every_audit_event(&store).await.is_empty());
    assert!(
        !store
            .delete_passkey(alice, Uuid::now_v7(), &theft)
            .await
            .unwrap(),
        "an unknown passkey"
    );
    assert!(every_audit_event(&store).await.is_empty());

    let removed = passkey_event(AuditKind::MfaRemoved, alice, "first");
    assert!(
        store
            .delete_passkey(alice, first.id, &removed)
            .await
            .unwrap()
    );
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![second.clone()]);
    assert_eq!(
        store
            .passkey_by_credential(&first.credential_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(every_audit_event(&store).await, removed.audit);

    let again = passkey_event(AuditKind::MfaRemoved, alice, "again");
    assert!(
        !store.delete_passkey(alice, first.id, &again).await.unwrap(),
        "gone already"
    );
    assert_eq!(
        every_audit_event(&store).await,
        removed.audit,
        "no effects without a deletion"
    );
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![second]);
    assert_eq!(store.passkeys(bob).await.unwrap(), vec![bobs]);
}

async fn purge_deletes_expired_ceremonies_and_keeps_live_ones(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "oli").await;
    let short = ceremony(CeremonyPurpose::Login, None, "short", Duration::minutes(1));
    let exact = ceremony(
        CeremonyPurpose::Register,
        Some(alice),
        "exact",
        Duration::minutes(2),
    );
    let long = ceremony(
        CeremonyPurpose::SecondFactor,
        Some(alice),
        "long",
        Duration::minutes(10),
    );
    for c in [&short, &exact, &long] {
        store.add_ceremony(c).await.unwrap();
    }
    let later = exact.expires_at;
    assert_eq!(
        store
            .purge(later, later - Duration::hours(1))
            .await
            .unwrap(),
        2,
        "the ceremonies expired by then, that one included whose expiry it is"
    );
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 1);
    // Asked at a time both purged ceremonies were still live: they are gone.
    for c in [&short, &exact] {
        assert_eq!(
            store
                .take_ceremony(c.id, c.purpose, c.created_at)
                .await
                .unwrap(),
            None,
            "{}",
            c.state
        );
    }
    assert_eq!(
        store
            .take_ceremony(long.id, long.purpose, later)
            .await
            .unwrap(),
        Some(long)
    );
}

async fn deleting_a_user_removes_its_passkeys_and_ceremonies(backend: Backend) {
    let (store, db) = open(backend).await;
    let alice = user_id(&store, "pax").await;
    let bob = user_id(&store, "roy").await;
    let now = clock::now();
    let alices = [
        passkey(alice, &[1, 0], "phone", now),
        passkey(alice, &[1, 0xff], "laptop", now),
    ];
    let bobs = [
        passkey(bob, &[2, 0], "phone", now),
        passkey(bob, &[2, 0xff], "laptop", now + Duration::seconds(1)),
    ];
    for p in alices.iter().chain(&bobs) {
        store
            .add_passkey(p, None, None, 20, &Default::default())
            .await
            .unwrap();
    }
    let of_alice = [
        ceremony(
            CeremonyPurpose::Register,
            Some(alice),
            "a",
            Duration::minutes(5),
        ),
        ceremony(
            CeremonyPurpose::SecondFactor,
            Some(alice),
            "b",
            Duration::minutes(5),
        ),
    ];
    let of_bob = ceremony(
        CeremonyPurpose::Register,
        Some(bob),
        "c",
        Duration::minutes(5),
    );
    let of_nobody = ceremony(CeremonyPurpose::Login, None, "d", Duration::minutes(5));
    for c in of_alice.iter().chain([&of_bob, &of_nobody]) {
        store.add_ceremony(c).await.unwrap();
    }
    assert_eq!(count_rows(&db, "passkeys").await, 4);
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 4);

    assert!(store.delete_user(alice, &Default::default()).await.unwrap());
    assert!(store.passkeys(alice).await.unwrap().is_empty());
    // Nothing of hers is left behind, in any table; Bob keeps his.
    assert_eq!(count_rows(&db, "passkeys").await, 2);
    assert_eq!(count_rows(&db, "webauthn_ceremonies").await, 2);
    for p in &alices {
        assert_eq!(
            store.passkey_by_credential(&p.credential_id).await.unwrap(),
            None
        );
    }
    assert_eq!(store.passkeys(bob).await.unwrap(), bobs.to_vec());
    let later = clock::now();
    for c in &of_alice {
        assert_eq!(
            store.take_ceremony(c.id, c.purpose, later).await.unwrap(),
            None
        );
    }
    for c in [of_bob, of_nobody] {
        assert_eq!(
            store.take_ceremony(c.id, c.purpose, later).await.unwrap(),
            Some(c)
        );
    }
}

/// How many rows a table holds, counted outside the store.
async fn count_rows(db: &TestDb, table: &str) -> i64 {
    use sqlx::Connection;
    let sql = format!("SELECT COUNT(*) FROM {table}");
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

async fn recovery_codes_stay_while_a_totp_factor_or_a_passkey_is_left(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "lea").await;
    let now = clock::now();
    let codes = [[4; 32], [5; 32]];

    assert!(!store.has_factor(alice).await.unwrap());
    // A first passkey brings its codes, in its own transaction.
    let key = passkey(alice, &[7, 7], "phone", now);
    store
        .add_passkey(&key, None, Some(&codes), 20, &Default::default())
        .await
        .unwrap();
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    // A clash writes neither the passkey nor the codes.
    let bob = user_id(&store, "max").await;
    let clash = passkey(bob, &[7, 7], "again", now);
    let refused = store
        .add_passkey(&clash, None, Some(&[[6; 32]]), 20, &Default::default())
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict("passkey"))));
    assert_eq!(store.recovery_codes_left(bob).await.unwrap(), 0);
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);
    assert!(store.has_factor(alice).await.unwrap());

    // A TOTP factor removed beside the passkey leaves the codes.
    let factor = totp(alice, "app", now);
    store.add_factor(&factor, never_stale()).await.unwrap();
    assert!(
        store
            .confirm_factor(alice, factor.id, 1, now, &codes, false, &Default::default())
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_factor(alice, factor.id, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 2);

    // The last factor, the passkey, takes them.
    assert!(
        store
            .delete_passkey(alice, key.id, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
    assert!(!store.has_factor(alice).await.unwrap(), "none left");

    // An admin's reset removes passkeys with the factors.
    let again = passkey(alice, &[8], "laptop", now);
    store
        .add_passkey(&again, None, Some(&codes), 20, &Default::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_factors(alice, clock::now(), &Default::default())
            .await
            .unwrap(),
        1
    );
    assert!(store.passkeys(alice).await.unwrap().is_empty());
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
}

async fn a_passkey_is_added_within_the_cap_and_as_first_factor_only_if_first(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "mae").await;
    let now = clock::now();
    let codes = [[9; 32]];

    let first = passkey(alice, &[1; 16], "one", now);
    assert_eq!(
        store
            .add_passkey(&first, None, Some(&codes), 2, &Default::default())
            .await
            .unwrap(),
        Added::Added
    );
    // Asked as the first factor again: there is one now.
    let second = passkey(alice, &[2; 16], "two", now);
    assert_eq!(
        store
            .add_passkey(&second, None, Some(&[[8; 32]]), 2, &Default::default())
            .await
            .unwrap(),
        Added::NotFirst
    );
    assert_eq!(store.passkeys(alice).await.unwrap(), vec![first.clone()]);
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 1);
    // So is a TOTP factor's confirmation asked to be the first.
    let app = totp(alice, "app", now);
    store.add_factor(&app, never_stale()).await.unwrap();
    let refused = store
        .confirm_factor(alice, app.id, 1, now, &[[7; 32]], true, &Default::default())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict("factor"))),
        "{refused:?}"
    );
    assert!(
        store.factors(alice).await.unwrap()[0]
            .confirmed_at
            .is_none()
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 1);
    assert!(store.use_recovery_code(alice, &[9; 32], now).await.unwrap());

    assert_eq!(
        store
            .add_passkey(&second, None, None, 2, &Default::default())
            .await
            .unwrap(),
        Added::Added
    );
    // At the cap, nothing more is written, whatever the starts let through.
    let third = passkey(alice, &[3; 16], "three", now);
    let effects = passkey_event(AuditKind::MfaEnrolled, alice, "three");
    assert_eq!(
        store
            .add_passkey(&third, None, None, 2, &effects)
            .await
            .unwrap(),
        Added::TooMany
    );
    assert_eq!(store.passkeys(alice).await.unwrap().len(), 2);
    assert!(every_audit_event(&store).await.is_empty());

    // New codes need a factor: with none left, none are written.
    for p in [&first, &second] {
        assert!(
            store
                .delete_passkey(alice, p.id, &Default::default())
                .await
                .unwrap()
        );
    }
    assert!(
        !store
            .replace_recovery_codes(alice, &codes, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(alice).await.unwrap(), 0);
}

async fn a_session_resting_on_a_factor_opens_only_while_the_factor_is_there(backend: Backend) {
    let (store, _db) = open(backend).await;
    let alice = user_id(&store, "ned").await;
    let now = clock::now();
    let key = passkey(alice, &[4; 16], "phone", now);
    store
        .add_passkey(&key, None, Some(&[[1; 32]]), 20, &Default::default())
        .await
        .unwrap();
    let resting_on = |factor: ProvedFactor, refresh: u8| NewSession {
        factor: Some(factor),
        ..session_for(alice, refresh, Duration::hours(1))
    };

    assert!(
        store
            .create_session(
                &resting_on(ProvedFactor::This(key.id), 1),
                &Default::default()
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_session(
                &resting_on(ProvedFactor::This(Uuid::now_v7()), 2),
                &Default::default()
            )
            .await
            .unwrap(),
        "another factor"
    );
    assert!(
        store
            .create_session(&resting_on(ProvedFactor::Any, 3), &Default::default())
            .await
            .unwrap()
    );

    // A reset removes the factors and ends the sessions with them: a login
    // that proved one opens nothing, and a passkey from an ended session is
    // not added.
    let session = store.list_sessions(alice, clock::now()).await.unwrap()[0].id;
    store
        .delete_factors(alice, clock::now(), &Default::default())
        .await
        .unwrap();
    assert!(
        store
            .list_sessions(alice, clock::now())
            .await
            .unwrap()
            .is_empty()
    );
    let late = passkey(alice, &[5; 16], "late", now);
    assert_eq!(
        store
            .add_passkey(&late, Some(session), None, 20, &Default::default())
            .await
            .unwrap(),
        Added::SessionEnded
    );
    for (factor, refresh) in [(ProvedFactor::This(key.id), 4), (ProvedFactor::Any, 5)] {
        assert!(
            !store
                .create_session(&resting_on(factor, refresh), &Default::default())
                .await
                .unwrap(),
            "{factor:?}"
        );
    }
    // A password login rests on no factor.
    assert!(
        store
            .create_session(
                &session_for(alice, 6, Duration::hours(1)),
                &Default::default()
            )
            .await
            .unwrap()
    );
}

fn oauth_client(id: &str, secret: Option<[u8; 32]>) -> OAuthClient {
    OAuthClient {
        id: id.to_owned(),
        name: format!("App {id}"),
        secret_hash: secret,
        redirect_uris: vec![
            "https://app.example.com/callback".into(),
            "com.example.app:/cb".into(),
        ],
        post_logout_redirect_uris: vec!["https://app.example.com/".into()],
        scopes: "email openid".into(),
        first_party: secret.is_none(),
        // Stored to the millisecond.
        created_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    }
}

async fn a_client_reads_back_whole_and_its_id_is_unique(backend: Backend) {
    let (store, _db) = open(backend).await;
    let confidential = oauth_client("AAAAAAAAAAAAAAAAAAAAAA", Some([7; 32]));
    let mut public = oauth_client("BBBBBBBBBBBBBBBBBBBBBB", None);
    public.post_logout_redirect_uris.clear();
    public.created_at += Duration::seconds(1);
    for c in [&confidential, &public] {
        store.add_client(c, &Default::default()).await.unwrap();
    }
    assert_eq!(
        store.client(&confidential.id).await.unwrap().unwrap(),
        confidential
    );
    assert_eq!(store.client(&public.id).await.unwrap().unwrap(), public);
    assert!(store.client(&public.id).await.unwrap().unwrap().is_public());
    assert_eq!(store.client("CCCCCCCCCCCCCCCCCCCCCC").await.unwrap(), None);
    assert_eq!(
        store.clients().await.unwrap(),
        vec![confidential.clone(), public.clone()]
    );

    let twin = oauth_client(&confidential.id, None);
    let event = AuditContext::default().record(AuditKind::ClientCreated, clock::now());
    let err = store
        .add_client(&twin, &Effects::audit(event))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("client_id")), "{err:?}");
    assert_eq!(
        store.client(&confidential.id).await.unwrap().unwrap(),
        confidential
    );
    assert!(every_audit_event(&store).await.is_empty());
}

async fn a_client_is_deleted_once_with_its_effects(backend: Backend) {
    let (store, _db) = open(backend).await;
    let client = oauth_client("AAAAAAAAAAAAAAAAAAAAAA", Some([1; 32]));
    store
        .add_client(&client, &Default::default())
        .await
        .unwrap();
    let event = || {
        Effects::audit(
            AuditContext::default()
                .record(AuditKind::ClientDeleted, clock::now())
                .detail(client.id.clone()),
        )
    };
    assert!(
        store
            .delete_client(&client.id, clock::now(), &event())
            .await
            .unwrap()
    );
    assert_eq!(store.client(&client.id).await.unwrap(), None);
    assert!(
        !store
            .delete_client(&client.id, clock::now(), &event())
            .await
            .unwrap()
    );
    let events = every_audit_event(&store).await;
    assert_eq!(events.len(), 1, "only the real deletion is recorded");
    assert_eq!(events[0].kind, AuditKind::ClientDeleted);
}

/// A user with a live browser session and a registered client: the user,
/// the session, the client.
async fn signed_in_with_client(store: &Arc<dyn Store>, name: &str) -> (Uuid, Uuid, OAuthClient) {
    let user = user_id(store, name).await;
    let browser = session_for(user, 1, Duration::hours(1));
    assert!(
        store
            .create_session(&browser, &Default::default())
            .await
            .unwrap()
    );
    let client = oauth_client("AAAAAAAAAAAAAAAAAAAAAA", Some([9; 32]));
    store
        .add_client(&client, &Default::default())
        .await
        .unwrap();
    (user, browser.id, client)
}

fn code_for(user_id: Uuid, hash: u8) -> AuthorizationCode {
    let now = clock::now();
    AuthorizationCode {
        code_hash: [hash; 32],
        client_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        user_id,
        redirect_uri: "https://app.example.com/callback".into(),
        scope: "openid".into(),
        nonce: Some("n".into()),
        code_challenge: "c".repeat(43),
        created_at: now,
        expires_at: now + Duration::seconds(60),
    }
}

fn client_session(refresh: u8) -> NewClientSession {
    let now = clock::now();
    NewClientSession {
        id: Uuid::now_v7(),
        created_at: now,
        expires_at: now + Duration::hours(1),
        refresh_hash: [refresh; 32],
        refresh_expires_at: now + Duration::hours(1),
        user_agent: None,
        ip: None,
    }
}

fn passes() -> CodeCheck {
    Arc::new(|_| true)
}

async fn a_code_is_redeemed_once_and_a_replay_ends_the_session_it_opened(backend: Backend) {
    let (store, _db) = open(backend).await;
    let (user, browser, _) = signed_in_with_client(&store, "ivy").await;
    let code = code_for(user, 7);
    assert!(store.add_code(&code, browser).await.unwrap());
    let opened = client_session(8);
    let now = clock::now();
    let redeemed = store
        .redeem_code(&code.code_hash, now, passes(), &opened, &Default::default())
        .await
        .unwrap();
    let CodeRedemption::Redeemed(issued) = redeemed else {
        panic!("expected a redemption, got {redeemed:?}");
    };
    assert_eq!(issued.code, code);
    // The browser session's authentication comes with the code.
    assert_eq!(issued.auth.level, "aal1");
    assert_eq!(
        store
            .session_user(opened.id, now)
            .await
            .unwrap()
            .map(|u| u.id),
        Some(user)
    );

    let again = store
        .redeem_code(
            &code.code_hash,
            now,
            passes(),
            &client_session(9),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(again, CodeRedemption::Replayed);
    assert_eq!(
        store.session_user(opened.id, now).await.unwrap(),
        None,
        "ended"
    );
    // The browser's own session is not the client's: it goes on.
    assert!(store.session_user(browser, now).await.unwrap().is_some());
    let unknown = store
        .redeem_code(
            &[1; 32],
            now,
            passes(),
            &client_session(10),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(unknown, CodeRedemption::Invalid);
}

async fn of_racing_redemptions_of_one_code_exactly_one_opens_a_session(backend: Backend) {
    let (store, _db) = open(backend).await;
    let (user, browser, _) = signed_in_with_client(&store, "jon").await;
    let code = code_for(user, 7);
    assert!(store.add_code(&code, browser).await.unwrap());
    let tasks = (0..8u8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .redeem_code(
                    &[7; 32],
                    clock::now(),
                    passes(),
                    &client_session(20 + i),
                    &Default::default(),
                )
                .await
                .unwrap()
        })
    });
    let outcomes: Vec<CodeRedemption> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let redeemed = outcomes
        .iter()
        .filter(|o| matches!(o, CodeRedemption::Redeemed(_)))
        .count();
    assert_eq!(redeemed, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, CodeRedemption::Redeemed(_) | CodeRedemption::Replayed)),
        "{outcomes:?}"
    );
}

async fn a_code_dies_with_its_browser_session_and_fails_its_check_used_up(backend: Backend) {
    let (store, _db) = open(backend).await;
    let (user, browser, _) = signed_in_with_client(&store, "kai").await;
    let now = clock::now();
    // A check that fails uses the code up all the same.
    let refused = code_for(user, 3);
    assert!(store.add_code(&refused, browser).await.unwrap());
    let fails: CodeCheck = Arc::new(|_| false);
    let outcome = store
        .redeem_code(
            &[3; 32],
            now,
            fails,
            &client_session(30),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, CodeRedemption::Refused);
    let outcome = store
        .redeem_code(
            &[3; 32],
            now,
            passes(),
            &client_session(31),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, CodeRedemption::Replayed);

    let code = code_for(user, 4);
    assert!(store.add_code(&code, browser).await.unwrap());
    store
        .revoke_user_sessions(
            user,
            None,
            RevokeReason::LogoutAll,
            now,
            &Default::default(),
        )
        .await
        .unwrap();
    let outcome = store
        .redeem_code(
            &[4; 32],
            now,
            passes(),
            &client_session(32),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        CodeRedemption::Invalid,
        "the browser session ended"
    );
    // And no code is issued for an ended session.
    assert!(!store.add_code(&code_for(user, 5), browser).await.unwrap());
}

async fn a_grant_is_saved_listed_and_revoked_with_the_clients_sessions(backend: Backend) {
    let (store, _db) = open(backend).await;
    let (user, browser, client) = signed_in_with_client(&store, "lux").await;
    let now = clock::now();
    assert_eq!(store.grant(user, &client.id).await.unwrap(), None);
    store
        .save_grant(user, &client.id, "openid", now)
        .await
        .unwrap();
    store
        .save_grant(user, &client.id, "email openid", now)
        .await
        .unwrap();
    assert_eq!(
        store.grant(user, &client.id).await.unwrap().as_deref(),
        Some("email openid")
    );
    let grants = store.grants(user).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].client_name, client.name);

    let code = code_for(user, 6);
    assert!(store.add_code(&code, browser).await.unwrap());
    let opened = client_session(40);
    store
        .redeem_code(&[6; 32], now, passes(), &opened, &Default::default())
        .await
        .unwrap();
    assert!(
        store
            .revoke_grant(user, &client.id, now, &Default::default())
            .await
            .unwrap()
    );
    assert_eq!(store.grant(user, &client.id).await.unwrap(), None);
    assert_eq!(
        store.session_user(opened.id, now).await.unwrap(),
        None,
        "the client's session ended"
    );
    assert!(
        store.session_user(browser, now).await.unwrap().is_some(),
        "the browser's goes on"
    );
    assert!(
        !store
            .revoke_grant(user, &client.id, now, &Default::default())
            .await
            .unwrap()
    );
}
