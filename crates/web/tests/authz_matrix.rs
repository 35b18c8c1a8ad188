//! The authorization matrix: every administration and check route × every kind of caller, against
//! the written table below, through the real router and middleware (no socket). A route added under
//! `/v1/admin` or `/v1/authz` without a row here fails `every_guarded_route_has_a_row_in_the_matrix`.
//!
//! Callers: anonymous; system-wide member, auditor, admin and owner; the admin of the organization a
//! route names (a member system-wide), and the admin of another organization.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly by design")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use http::{Request, header};
use http_body_util::BodyExt;
use portcullis_app::mail::FileOutbox;
use portcullis_app::{
    App, AppSettings, HashAlgorithm, IssuedCredentials, KekSet, LoginMode, LoginOutcome, SystemClock,
};
use portcullis_domain::BuiltinRole;
use portcullis_store::Store;
use portcullis_store_sqlite::SqliteStore;
use portcullis_web::{AppState, WebConfig};
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceExt;

const PASSWORD: &str = "velvet otter migrates at dusk";

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Member,
    Auditor,
    Admin,
    Owner,
    OrgAdmin,
    OtherOrgAdmin,
}

const CALLERS: [Caller; 7] = [
    Caller::Anonymous,
    Caller::Member,
    Caller::Auditor,
    Caller::Admin,
    Caller::Owner,
    Caller::OrgAdmin,
    Caller::OtherOrgAdmin,
];

/// One row: a route (`{id}` is a fresh member account made for each call, `{self}` the caller's own
/// account, `{owner}` another owner, `{org}` a fresh organization, `{member}` a fresh member of it,
/// `{role}` a custom role of it granting `users:read` that `{member}` holds, and `{strong_role}` one
/// granting `orgs:delete`, which an administrator lacks, `{sa}` a member-role service account of it
/// and `{sa_key}` one of its keys),
/// its body, and the expected status for each caller in the order of [`CALLERS`].
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expected: [u16; 7],
}

/// The table. Reading across: anonymous, member, auditor, admin, owner, the organization's admin,
/// another organization's admin.
const MATRIX: &[Row] = &[
    Row { method: "GET", path: "/v1/admin/users", body: None, expected: [401, 403, 200, 200, 200, 403, 403] },
    // An organization's administrator lists its members; another tenant's organization is not found.
    Row {
        method: "GET",
        path: "/v1/admin/users?organization={org}&email_prefix=a",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users",
        body: Some(r#"{"email":"{email}","password":"velvet otter migrates at dusk"}"#),
        expected: [401, 403, 403, 201, 201, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users",
        body: Some(r#"{"email":"{email}","password":"velvet otter migrates at dusk","role":"owner"}"#),
        expected: [401, 403, 403, 403, 201, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/users/{id}",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/users/{self}",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/users/{id}",
        body: Some(r#"{"display_name":"Renamed","email":"{email}"}"#),
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/users/{owner}",
        body: Some(r#"{"display_name":null}"#),
        expected: [401, 403, 403, 403, 200, 403, 403],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/users/{self}",
        body: Some(r#"{"display_name":"Me"}"#),
        expected: [401, 403, 403, 403, 403, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/users/{id}",
        body: None,
        expected: [401, 403, 403, 204, 204, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/users/{owner}",
        body: None,
        expected: [401, 403, 403, 403, 204, 403, 403],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/users/{id}/role",
        body: Some(r#"{"role":"auditor"}"#),
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/users/{id}/role",
        body: Some(r#"{"role":"owner"}"#),
        expected: [401, 403, 403, 403, 200, 403, 403],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/users/{self}/role",
        body: Some(r#"{"role":"owner"}"#),
        expected: [401, 403, 403, 403, 403, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users/{id}/disable",
        body: None,
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users/{owner}/disable",
        body: None,
        expected: [401, 403, 403, 403, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users/{self}/disable",
        body: None,
        expected: [401, 403, 403, 403, 403, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users/{id}/enable",
        body: None,
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/users/{id}/unlock",
        body: None,
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/users/{id}/sessions",
        body: None,
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/users/{self}/sessions",
        body: None,
        expected: [401, 200, 200, 200, 200, 200, 200],
    },
    // A person's whole data spans every organization they belong to: exporting it needs users,
    // sessions, API keys and audit read system-wide, so an organization's administrator cannot, not
    // even for its own members; a member exports their own through /v1/me/export.
    Row {
        method: "GET",
        path: "/v1/admin/users/{id}/export",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/users/{member}/export",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/users/{self}/export",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/users/{id}/mfa",
        body: None,
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/invites",
        body: Some(r#"{"email":"{email}"}"#),
        expected: [401, 403, 403, 202, 202, 403, 403],
    },
    // The installation's security events need `security:read` system-wide: an organization's
    // administrator holds it only within its organization, which no event belongs to.
    Row {
        method: "GET",
        path: "/v1/admin/security-events",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/security-events?kind=login_failed,ip_denied&kind=rate_limited&user_id={member}\
               &since=2026-01-01T00:00:00Z&until=2126-01-01T00:00:00%2B01:00&limit=5",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    // The audit trail: `audit:read` system-wide (auditor, admin, owner) reads it all; an
    // organization's administrator reads its own organization's events and nothing else. Writing is
    // for service accounts holding `audit:write`: no person may, whatever their role.
    Row {
        method: "GET",
        path: "/v1/audit/events",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/audit/events?organization_id={org}&action=user.&limit=5",
        body: None,
        expected: [401, 403, 200, 200, 200, 200, 403],
    },
    Row {
        method: "POST",
        path: "/v1/audit/events",
        body: Some(r#"{"events":[{"action":"invoice.paid","organization_id":"{org}"}]}"#),
        expected: [401, 403, 403, 403, 403, 403, 403],
    },
    // IP rules are installation-wide: `iprules:read` (auditor, admin, owner) and `iprules:write`
    // (admin, owner) system-wide; an organization's administrator holds neither. `{id}` names no
    // rule, so the callers allowed to delete get 404.
    Row {
        method: "GET",
        path: "/v1/admin/ip-rules",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/ip-rules",
        body: Some(r#"{"network":"2001:db8:dead::/48","action":"deny","scope":"global","note":"matrix"}"#),
        expected: [401, 403, 403, 201, 201, 403, 403],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/ip-rules/{id}",
        body: None,
        expected: [401, 403, 403, 404, 404, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/authz/check",
        body: Some(r#"{"permission":"users:read"}"#),
        expected: [401, 200, 200, 200, 200, 200, 200],
    },
    Row {
        method: "POST",
        path: "/v1/authz/check",
        body: Some(r#"{"permission":"users:read","subject":"{id}"}"#),
        expected: [401, 403, 403, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/authz/check-batch",
        body: Some(r#"{"checks":[{"permission":"users:read"}]}"#),
        expected: [401, 200, 200, 200, 200, 200, 200],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "POST",
        path: "/v1/admin/organizations",
        body: Some(r#"{"slug":"{slug}","name":"New"}"#),
        expected: [401, 403, 403, 201, 201, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations/{org}",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/organizations/{org}",
        body: Some(r#"{"name":"Renamed"}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations/{org}/mfa-policy",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/organizations/{org}/mfa-policy",
        body: Some(r#"{"required":false}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/organizations/{org}",
        body: None,
        expected: [401, 404, 403, 403, 204, 403, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations/{org}/members",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/organizations/{org}/members/{id}",
        body: Some(r#"{"role":"member"}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/organizations/{org}/members/{id}",
        body: Some(r#"{"role":"owner"}"#),
        expected: [401, 404, 403, 403, 200, 403, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/organizations/{org}/members/{member}",
        body: None,
        expected: [401, 404, 403, 204, 204, 204, 404],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/organizations/{org}/members/{id}",
        body: Some(r#"{"role":"member","roles":["{role}"]}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "PUT",
        path: "/v1/admin/organizations/{org}/members/{id}",
        body: Some(r#"{"role":"member","roles":["{strong_role}"]}"#),
        expected: [401, 404, 403, 403, 200, 403, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations/{org}/roles",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "POST",
        path: "/v1/admin/organizations/{org}/roles",
        body: Some(r#"{"name":"{slug}","permissions":["users:read","memberships:*"]}"#),
        expected: [401, 404, 403, 201, 201, 201, 404],
    },
    Row {
        method: "POST",
        path: "/v1/admin/organizations/{org}/roles",
        body: Some(r#"{"name":"{slug}","permissions":["*:*"]}"#),
        expected: [401, 404, 403, 403, 201, 403, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/organizations/{org}/roles/{role}",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/organizations/{org}/roles/{role}",
        body: Some(r#"{"permissions":["users:read","users:write"]}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/organizations/{org}/roles/{role}",
        body: Some(r#"{"permissions":["users:read","orgs:delete"]}"#),
        expected: [401, 404, 403, 403, 200, 403, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/organizations/{org}/roles/{strong_role}",
        body: Some(r#"{"name":"renamed"}"#),
        expected: [401, 404, 403, 403, 200, 403, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/organizations/{org}/roles/{role}",
        body: None,
        expected: [401, 404, 403, 409, 409, 409, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/organizations/{org}/roles/{role}?force=true",
        body: None,
        expected: [401, 404, 403, 204, 204, 204, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/service-accounts",
        body: None,
        expected: [401, 403, 200, 200, 200, 403, 403],
    },
    Row {
        method: "GET",
        path: "/v1/admin/service-accounts?organization={org}",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    // Another tenant's organization, like a missing one, is a field error of the body.
    Row {
        method: "POST",
        path: "/v1/admin/service-accounts",
        body: Some(r#"{"organization_id":"{org}","name":"{slug}","role":"member"}"#),
        expected: [401, 422, 403, 201, 201, 201, 422],
    },
    Row {
        method: "POST",
        path: "/v1/admin/service-accounts",
        body: Some(r#"{"organization_id":"{org}","name":"{slug}","role":"owner"}"#),
        expected: [401, 422, 403, 403, 201, 403, 422],
    },
    Row {
        method: "GET",
        path: "/v1/admin/service-accounts/{sa}",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/service-accounts/{sa}",
        body: Some(r#"{"active":false}"#),
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
    Row {
        method: "PATCH",
        path: "/v1/admin/service-accounts/{sa}",
        body: Some(r#"{"role":"owner"}"#),
        expected: [401, 404, 403, 403, 200, 403, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/service-accounts/{sa}",
        body: None,
        expected: [401, 404, 403, 204, 204, 204, 404],
    },
    Row {
        method: "GET",
        path: "/v1/admin/service-accounts/{sa}/api-keys",
        body: None,
        expected: [401, 404, 200, 200, 200, 200, 404],
    },
    Row {
        method: "POST",
        path: "/v1/admin/service-accounts/{sa}/api-keys",
        body: Some(r#"{"name":"k","scopes":["profile:read"],"expires_in_days":1}"#),
        expected: [401, 404, 403, 201, 201, 201, 404],
    },
    Row {
        method: "DELETE",
        path: "/v1/admin/service-accounts/{sa}/api-keys/{sa_key}",
        body: None,
        expected: [401, 404, 403, 204, 204, 204, 404],
    },
    Row {
        method: "POST",
        path: "/v1/admin/service-accounts/{sa}/api-keys/{sa_key}/rotate",
        body: None,
        expected: [401, 404, 403, 200, 200, 200, 404],
    },
];

struct World {
    app: App,
    router: Router,
    counter: AtomicUsize,
    /// An owner who sets up organizations and memberships for the cells.
    root: portcullis_app::Principal,
}

impl World {
    async fn new() -> World {
        let store = SqliteStore::open_in_memory().await.unwrap();
        store.migrate().await.unwrap();
        let keks = KekSet::parse(&KekSet::generate_entry("test").unwrap()).unwrap();
        let mut settings =
            AppSettings::new(secrecy::SecretSlice::from(vec![7u8; 32]), keks, "test", "http://localhost");
        settings.password_hash = HashAlgorithm::Argon2id { memory_kib: 64, iterations: 1, parallelism: 1 };
        // The matrix sends hundreds of requests from one address; budgets are proven elsewhere.
        settings.rate_limits.enabled = false;
        let outbox = FileOutbox::new(tempfile::tempdir().unwrap().keep(), "test@example.com").unwrap();
        let app = App::new(Arc::new(store), Arc::new(SystemClock), settings, Arc::new(outbox)).unwrap();
        app.load_keys().await.unwrap();
        let router = portcullis_web::router(AppState::new(app.clone()), &WebConfig::default()).unwrap();
        app.create_user_as_operator(
            "root@example.com",
            None,
            SecretString::from(PASSWORD),
            BuiltinRole::Owner,
        )
        .await
        .unwrap();
        let LoginOutcome::Authenticated { credentials, .. } = app
            .login("root@example.com", SecretString::from(PASSWORD), LoginMode::Bearer, &Default::default())
            .await
            .unwrap()
        else {
            panic!("no second factor here")
        };
        let IssuedCredentials::Bearer { access_token, .. } = credentials else { panic!("bearer") };
        let root = app.authenticate_bearer(&access_token).unwrap();
        World { app, router, counter: AtomicUsize::new(0), root }
    }

    /// A fresh organization's id.
    async fn organization(&self) -> String {
        let slug = format!("org{}", self.counter.fetch_add(1, Ordering::Relaxed));
        self.app.admin_create_organization(&self.root, &slug, "Org").await.unwrap().id.to_string()
    }

    /// A fresh custom role of `org` granting `permission`; its id.
    async fn role(&self, org: &str, permission: &str) -> String {
        let name = format!("role{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let role =
            self.app.admin_create_role(&self.root, org, &name, &[permission.to_owned()]).await.unwrap();
        role.id.to_string()
    }

    /// A fresh member-role service account of `org` and one of its keys: their ids.
    async fn service_account(&self, org: &str) -> (String, String) {
        let name = format!("robot{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let account =
            self.app.admin_create_service_account(&self.root, org, &name, BuiltinRole::Member).await.unwrap();
        let new = portcullis_app::NewApiKey {
            name: "k".into(),
            scopes: vec!["profile:read".into()],
            expires_in_days: 1,
            allowed_cidrs: Vec::new(),
        };
        let id = account.id.to_string();
        let key = self.app.admin_create_service_account_key(&self.root, &id, &new).await.unwrap();
        (id, key.key.id.to_string())
    }

    async fn join(&self, org: &str, user: &str, role: BuiltinRole) {
        self.app.admin_set_member(&self.root, org, user, role, None).await.unwrap();
    }

    fn fresh_email(&self, what: &str) -> String {
        format!("{what}{}@example.com", self.counter.fetch_add(1, Ordering::Relaxed))
    }

    /// A new account of `role`, with a bearer token.
    async fn account(&self, role: BuiltinRole) -> (String, String) {
        let email = self.fresh_email(role.as_str());
        let profile =
            self.app.create_user_as_operator(&email, None, SecretString::from(PASSWORD), role).await.unwrap();
        let token = self.login(&email).await;
        (profile.id.to_string(), token)
    }

    async fn login(&self, email: &str) -> String {
        let LoginOutcome::Authenticated { credentials, .. } = self
            .app
            .login(email, SecretString::from(PASSWORD), LoginMode::Bearer, &Default::default())
            .await
            .unwrap()
        else {
            panic!("no second factor here")
        };
        let IssuedCredentials::Bearer { access_token, .. } = credentials else { panic!("bearer") };
        access_token
    }

    /// A new token for an existing account.
    async fn token_of(&self, id: &str) -> String {
        let user = self.app.admin_get_user(&self.root, id).await.unwrap();
        self.login(&user.email).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, serde_json::Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_the_matrix_says() {
    let world = World::new().await;
    // Two owners, so that one owner may act on the other without being the last.
    world.account(BuiltinRole::Owner).await;
    let mut failures = Vec::new();
    for row in MATRIX {
        for (caller, expected) in CALLERS.iter().zip(row.expected) {
            let org = world.organization().await;
            let other_org = world.organization().await;
            let (self_id, token) = match caller {
                Caller::Anonymous => (String::new(), None),
                Caller::Member => {
                    let (id, t) = world.account(BuiltinRole::Member).await;
                    (id, Some(t))
                }
                Caller::Auditor => {
                    let (id, t) = world.account(BuiltinRole::Auditor).await;
                    (id, Some(t))
                }
                Caller::Admin => {
                    let (id, t) = world.account(BuiltinRole::Admin).await;
                    (id, Some(t))
                }
                Caller::Owner => {
                    let (id, t) = world.account(BuiltinRole::Owner).await;
                    (id, Some(t))
                }
                Caller::OrgAdmin | Caller::OtherOrgAdmin => {
                    let (id, _) = world.account(BuiltinRole::Member).await;
                    let home = if *caller == Caller::OrgAdmin { &org } else { &other_org };
                    world.join(home, &id, BuiltinRole::Admin).await;
                    // A token minted after joining, read fresh: the profile cache keeps an account's
                    // memberships from its first read.
                    let token = world.token_of(&id).await;
                    (id, Some(token))
                }
            };
            let (member, _) = world.account(BuiltinRole::Member).await;
            world.join(&org, &member, BuiltinRole::Member).await;
            let role = world.role(&org, "users:read").await;
            let (sa, sa_key) = world.service_account(&org).await;
            let strong_role = world.role(&org, "orgs:delete").await;
            world
                .app
                .admin_set_member(
                    &world.root,
                    &org,
                    &member,
                    BuiltinRole::Member,
                    Some(std::slice::from_ref(&role)),
                )
                .await
                .unwrap();
            let (target, _) = world.account(BuiltinRole::Member).await;
            let (other_owner, _) = world.account(BuiltinRole::Owner).await;
            let fill = |text: &str| {
                text.replace("{id}", &target)
                    .replace("{owner}", &other_owner)
                    .replace("{org}", &org)
                    .replace("{member}", &member)
                    .replace("{strong_role}", &strong_role)
                    .replace("{sa_key}", &sa_key)
                    .replace("{sa}", &sa)
                    .replace("{role}", &role)
                    .replace("{slug}", &format!("s{}", world.counter.fetch_add(1, Ordering::Relaxed)))
                    .replace("{self}", if self_id.is_empty() { &target } else { &self_id })
                    .replace("{email}", &world.fresh_email("new"))
            };
            let (status, json) =
                world.send(row.method, &fill(row.path), token.as_deref(), row.body.map(fill)).await;
            if status != expected {
                failures.push(format!(
                    "{} {} as {caller:?}: {status}, expected {expected} ({json})",
                    row.method, row.path
                ));
            }
            if status >= 400 {
                assert!(
                    json["type"].as_str().is_some_and(|t| t.starts_with("urn:portcullis:problem:")),
                    "{json}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{} cells differ from the matrix:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn another_accounts_id_a_missing_id_and_a_malformed_id_look_the_same_to_an_admin_route() {
    let world = World::new().await;
    let (_, admin) = world.account(BuiltinRole::Admin).await;
    let (member, _) = world.account(BuiltinRole::Member).await;
    world
        .app
        .create_user_as_operator("gone@example.com", None, SecretString::from(PASSWORD), BuiltinRole::Member)
        .await
        .unwrap();
    let (deleted, _) = world.account(BuiltinRole::Member).await;
    assert_eq!(world.send("DELETE", &format!("/v1/admin/users/{deleted}"), Some(&admin), None).await.0, 204);
    for id in [deleted.as_str(), "00000000-0000-4000-8000-000000000000", "not-a-uuid", "%00"] {
        for path in [format!("/v1/admin/users/{id}"), format!("/v1/admin/users/{id}/export")] {
            let (status, json) = world.send("GET", &path, Some(&admin), None).await;
            assert_eq!(status, 404, "{path}: {json}");
            assert_eq!(json["type"], "urn:portcullis:problem:not-found");
        }
    }
    assert_eq!(world.send("GET", &format!("/v1/admin/users/{member}"), Some(&admin), None).await.0, 200);
    let (status, json) =
        world.send("GET", &format!("/v1/admin/users/{member}/export"), Some(&admin), None).await;
    assert_eq!((status, &json["user"]["id"]), (200, &serde_json::json!(member)), "{json}");
}

#[tokio::test]
async fn escalation_attempts_are_refused_and_change_nothing() {
    let world = World::new().await;
    let (admin_id, admin) = world.account(BuiltinRole::Admin).await;
    let (member_id, member) = world.account(BuiltinRole::Member).await;
    // A member makes itself admin; an admin makes itself owner; an admin creates an owner.
    let attempts = [
        (
            "PUT",
            format!("/v1/admin/users/{member_id}/role"),
            Some(r#"{"role":"admin"}"#.to_owned()),
            member.clone(),
        ),
        (
            "PUT",
            format!("/v1/admin/users/{admin_id}/role"),
            Some(r#"{"role":"owner"}"#.to_owned()),
            admin.clone(),
        ),
        (
            "POST",
            "/v1/admin/users".to_owned(),
            Some(format!(r#"{{"email":"x@example.com","password":"{PASSWORD}","role":"owner"}}"#)),
            admin.clone(),
        ),
        ("POST", "/v1/authz/check".to_owned(), Some(r#"{"permission":"*:*"}"#.to_owned()), member.clone()),
    ];
    for (method, path, body, token) in attempts {
        let (status, json) = world.send(method, &path, Some(&token), body).await;
        assert!(status == 403 || status == 422, "{method} {path}: {status} {json}");
    }
    let (_, me) = world.send("GET", "/v1/me", Some(&member), None).await;
    assert_eq!(me["role"], "member");
    let (_, me) = world.send("GET", "/v1/me", Some(&admin), None).await;
    assert_eq!(me["role"], "admin");
    let (_, list) = world.send("GET", "/v1/admin/users?limit=200", Some(&admin), None).await;
    assert!(list["users"].as_array().unwrap().iter().all(|u| u["email"] != "x@example.com"));
}

#[tokio::test]
async fn the_user_list_rejects_malformed_and_unknown_query_parameters_with_problems() {
    let world = World::new().await;
    let (_, admin) = world.account(BuiltinRole::Admin).await;
    for (query, status) in [
        ("?limit=0", 422),
        ("?limit=abc", 422),
        ("?status=sleeping", 422),
        ("?after=zzz", 422),
        ("?admin=true", 400),
    ] {
        let (got, json) = world.send("GET", &format!("/v1/admin/users{query}"), Some(&admin), None).await;
        assert_eq!(got, status, "{query}: {json}");
    }
}

/// The field a problem's first field error names.
fn first_error_field(json: &serde_json::Value) -> &str {
    json["errors"][0]["field"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_security_event_list_is_read_by_an_api_key_only_within_a_security_read_scope() {
    let world = World::new().await;
    let (_, admin) = world.account(BuiltinRole::Admin).await;
    let admin = world.app.authenticate_bearer(&admin).unwrap();
    let key = |scopes: &[&str]| portcullis_app::NewApiKey {
        name: "siem".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 1,
        allowed_cidrs: Vec::new(),
    };
    let narrow = world.app.create_my_api_key(&admin, &key(&["users:read"])).await.unwrap();
    let siem = world.app.create_my_api_key(&admin, &key(&["security:read"])).await.unwrap();
    let path = "/v1/admin/security-events";

    let (status, json) = world.send("GET", path, Some(narrow.secret.expose_secret()), None).await;
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["type"], "urn:portcullis:problem:forbidden");
    let (status, json) = world.send("GET", path, Some(siem.secret.expose_secret()), None).await;
    assert_eq!(status, 200, "{json}");
    assert!(json["events"].is_array());
}

#[tokio::test]
async fn the_security_event_list_pages_newest_first_in_the_documented_shape() {
    let world = World::new().await;
    let (_, auditor) = world.account(BuiltinRole::Auditor).await;
    let (member, _) = world.account(BuiltinRole::Member).await;
    let email = world.app.admin_get_user(&world.root, &member).await.unwrap().email;
    for _ in 0..2 {
        let refused = world
            .app
            .login(
                &email,
                SecretString::from("not the password at all"),
                LoginMode::Bearer,
                &Default::default(),
            )
            .await;
        assert!(refused.is_err());
    }
    let first_page = format!("/v1/admin/security-events?kind=login_failed&user_id={member}&limit=1");
    let (status, first) = world.send("GET", &first_page, Some(&auditor), None).await;
    assert_eq!(status, 200, "{first}");
    let event = &first["events"][0];
    assert_eq!(event["kind"], "login_failed");
    assert_eq!(event["severity"], "low");
    assert_eq!(event["user_id"], member.as_str());
    assert!(event["at"].as_str().is_some_and(|at| at.ends_with('Z') && at.len() == 24), "{event}");
    assert!(event["id"].is_string() && event["details"].is_object(), "{event}");
    let next = first["next"].as_str().expect("a second page");
    let (status, second) =
        world.send("GET", &format!("{first_page}&after={next}"), Some(&auditor), None).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["events"].as_array().map(Vec::len), Some(1));
    assert_ne!(second["events"][0]["id"], event["id"]);
    assert!(second["next"].is_null(), "{second}");
}

#[tokio::test]
async fn the_security_event_list_refuses_malformed_parameters_with_problems_that_leak_nothing() {
    let world = World::new().await;
    let (_, admin) = world.account(BuiltinRole::Admin).await;
    let (_, member) = world.account(BuiltinRole::Member).await;
    let canary = "CANARY-e1b2";
    let cases: Vec<(String, u16, &str)> = vec![
        ("after=zzz".into(), 422, "/after"),
        (format!("after={}", "g".repeat(32)), 422, "/after"),
        ("limit=0".into(), 422, "/limit"),
        ("limit=201".into(), 422, "/limit"),
        ("limit=-1".into(), 422, "/limit"),
        (format!("limit={canary}"), 422, "/limit"),
        ("limit=5&limit=6".into(), 422, "/limit"),
        ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z".into(), 422, "/until"),
        (format!("since={canary}"), 422, "/since"),
        ("until=2026-01-01T00:00:00%ZZ".into(), 422, "/until"),
        (format!("user_id={canary}"), 422, "/user_id"),
        ("user_id=%27%20OR%20%271%27%3D%271".into(), 422, "/user_id"),
        (format!("kind=login_failed,{canary}"), 422, "/kind"),
        (format!("kind=login_failed&kind={canary}"), 422, "/kind"),
        ("kind=".into(), 422, "/kind"),
        (format!("{canary}=1"), 400, ""),
    ];
    for (query, status, field) in cases {
        let path = format!("/v1/admin/security-events?{query}");
        let (got, json) = world.send("GET", &path, Some(&admin), None).await;
        assert_eq!(got, status, "{query}: {json}");
        assert!(json["type"].as_str().is_some_and(|t| t.starts_with("urn:portcullis:problem:")), "{json}");
        assert!(!json.to_string().contains(canary), "{query} echoed: {json}");
        assert!(!json.to_string().contains("OR '1'"), "{query} echoed: {json}");
        if status == 422 {
            assert_eq!(first_error_field(&json), field, "{query}: {json}");
        }
        // A caller without the permission learns nothing more than that.
        let (got, json) = world.send("GET", &path, Some(&member), None).await;
        if status == 400 || field == "/limit" {
            // The query string's shape (and a limit's number) is read before the use case runs.
            assert!(got == status || got == 403, "{query} as a member: {got} {json}");
        } else {
            assert_eq!(got, 403, "{query} as a member: {json}");
        }
        assert!(!json.to_string().contains(canary), "{query} echoed: {json}");
    }
}

#[tokio::test]
async fn every_guarded_route_has_a_row_in_the_matrix() {
    let world = World::new().await;
    let (_, json) = world.send("GET", "/openapi.json", None, None).await;
    for (path, item) in json["paths"].as_object().unwrap() {
        if !(path.starts_with("/v1/admin") || path.starts_with("/v1/authz")) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let covered = MATRIX.iter().any(|row| {
                row.method.eq_ignore_ascii_case(method)
                    && row
                        .path
                        .replace("{self}", "{id}")
                        .replace("{owner}", "{id}")
                        .replace("{org}", "{id}")
                        .replace("{member}", "{user_id}")
                        .replace("{strong_role}", "{role_id}")
                        .replace("{sa_key}", "{key_id}")
                        .replace("{sa}", "{id}")
                        .replace("{role}", "{role_id}")
                        .replace("/members/{id}", "/members/{user_id}")
                        == *path
            });
            assert!(covered, "{method} {path} has no row in the authorization matrix");
        }
    }
}

#[tokio::test]
async fn a_check_whose_resource_is_not_an_object_is_refused() {
    let world = World::new().await;
    let (_, member) = world.account(BuiltinRole::Member).await;
    for resource in ["null", "[null, null]", "\"x\"", "{\"owner\": 1}", "{\"tenant\": \"x\"}"] {
        let body = format!(r#"{{"permission":"users:read","resource":{resource}}}"#);
        let (status, json) = world.send("POST", "/v1/authz/check", Some(&member), Some(body)).await;
        assert_eq!(status, 422, "{resource}: {json}");
    }
    let (status, _) = world
        .send("POST", "/v1/authz/check", Some(&member), Some(r#"{"permission":"users:read"}"#.into()))
        .await;
    assert_eq!(status, 200);
}
