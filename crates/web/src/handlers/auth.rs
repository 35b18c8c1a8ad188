//! `/v1/auth/*`: signup, email verification, login, refresh, logout, password reset, first setup.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_app::{IssuedCredentials, LoginMode, LoginOutcome, SignupRequest};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authenticated, Client, PresentedCookie, SESSION_COOKIE, SameOrigin};
use crate::error::ApiError;
use crate::extract::Json;

/// The one body of answers that must not reveal anything (signup, forgot password).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// Always `accepted`.
    status: &'static str,
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(Accepted { status: "accepted" })).into_response()
}

/// A new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignupBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    password: SecretString,
    #[schema(min_length = 1, max_length = 64)]
    display_name: Option<String>,
    /// The token from an invite link; required while signup is invite-only.
    #[schema(value_type = Option<String>, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    invite_token: Option<SecretString>,
}

/// Creates an account. Answers 202 whether or not the address already has one; its owner is told by
/// email instead, so the answer cannot be used to find accounts.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", operation_id = "signup", security(()),
    request_body = SignupBody,
    responses((status = 202, description = "Accepted; a confirmation email is on its way.", body = Accepted)))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    Client(client): Client,
    Json(body): Json<SignupBody>,
) -> Result<Response, ApiError> {
    let request = SignupRequest {
        email: body.email,
        password: body.password,
        display_name: body.display_name,
        invite_token: body.invite_token,
    };
    state.app.signup(request, &client).await?;
    Ok(accepted())
}

/// A token from an emailed link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    token: SecretString,
}

/// Confirms an email address with the token from the verification link.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", operation_id = "verify_email", security(()),
    request_body = TokenBody,
    responses((status = 204, description = "The address is verified.")))]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    Json(body): Json<TokenBody>,
) -> Result<StatusCode, ApiError> {
    state.app.verify_email(body.token.expose_secret()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How the client wants to hold its session.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Access and refresh tokens in the body (API clients).
    #[default]
    Token,
    /// An HttpOnly session cookie plus a CSRF token (browsers).
    Cookie,
}

/// Email and password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    #[schema(max_length = 254)]
    email: String,
    #[schema(value_type = String, format = Password)]
    password: SecretString,
    #[serde(default)]
    mode: Mode,
}

/// Tokens for an API client, with the OAuth 2 field names (RFC 6749 section 5.1). Its `Debug` shows
/// no token.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokenResponse {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: i64,
    /// Single use: each refresh returns a new one, and presenting a spent one ends the session.
    refresh_token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

/// A browser session: the cookie is in `Set-Cookie`, the CSRF token here.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CookieSessionResponse {
    /// Send as `X-CSRF-Token` on every state-changing request.
    csrf_token: String,
    /// When the session ends, whatever the activity (RFC 3339).
    expires_at: String,
}

/// What a login answers: tokens (mode `token`) or the CSRF token of a cookie session (mode `cookie`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "describes the login body for the OpenAPI document; the handler builds its parts"
)]
pub(crate) enum LoginResponse {
    Token(TokenResponse),
    Cookie(CookieSessionResponse),
}

fn credentials_response(credentials: IssuedCredentials) -> Response {
    match credentials {
        IssuedCredentials::Bearer { access_token, expires_in, refresh_token } => axum::Json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in,
            refresh_token: refresh_token.expose().to_owned(),
        })
        .into_response(),
        IssuedCredentials::Cookie { cookie, csrf_token, expires_at, max_age_secs } => {
            // Secure always: browsers accept it on http://localhost too.
            let set_cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}",
                cookie.expose()
            );
            let mut response =
                axum::Json(CookieSessionResponse { csrf_token, expires_at: expires_at.to_rfc3339() })
                    .into_response();
            if let Ok(value) = HeaderValue::from_str(&set_cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
    }
}

/// Logs in. Every failure is 401 `invalid-credentials` with one message.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", operation_id = "login", security(()),
    request_body = LoginBody,
    responses(
        (status = 200, description = "Logged in: tokens (mode `token`) or a session cookie and CSRF token \
            (mode `cookie`).", body = LoginResponse),
        (status = 401, description = "Wrong email or password, or the account may not log in.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    SameOrigin(same_origin): SameOrigin,
    PresentedCookie(old_cookie): PresentedCookie,
    Json(body): Json<LoginBody>,
) -> Result<Response, ApiError> {
    let mode = match body.mode {
        Mode::Token => LoginMode::Bearer,
        Mode::Cookie => {
            // Login CSRF: a foreign page must not plant its own account's session in a victim's browser.
            if !same_origin {
                state.app.reject_csrf(None, &client).await?;
            }
            LoginMode::Cookie
        }
    };
    let outcome = state.app.login(&body.email, body.password, mode, &client).await?;
    if let (LoginMode::Cookie, Some(old)) = (mode, old_cookie) {
        // The browser's previous session (its own, or one an attacker planted) ends with this login.
        state.app.end_cookie_session(&old).await?;
    }
    match outcome {
        LoginOutcome::Authenticated { credentials, .. } => Ok(credentials_response(credentials)),
    }
}

/// A refresh token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    refresh_token: SecretString,
}

/// Exchanges a refresh token for new tokens. The presented token is spent; presenting it again ends
/// the whole session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", operation_id = "refresh", security(()),
    request_body = RefreshBody,
    responses((status = 200, description = "New tokens.", body = TokenResponse)))]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    Client(client): Client,
    Json(body): Json<RefreshBody>,
) -> Result<Response, ApiError> {
    let credentials = state.app.refresh(body.refresh_token.expose_secret(), &client).await?;
    Ok(credentials_response(credentials))
}

/// Clears the session cookie, and asks the browser to drop everything it keeps for this origin
/// (ASVS 14.3.1: `Clear-Site-Data`).
fn clear_cookie(mut response: Response) -> Response {
    let value = format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert("clear-site-data", HeaderValue::from_static(r#""cache", "cookies", "storage""#));
    response
}

/// Ends the current session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", operation_id = "logout",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 204, description = "Logged out.")))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    state.app.logout(&principal).await?;
    Ok(clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// Ends every session of the account, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth", operation_id = "logout_all",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 204, description = "Every session ended.")))]
pub(crate) async fn logout_all(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    state.app.logout_all(&principal).await?;
    Ok(clear_cookie(StatusCode::NO_CONTENT.into_response()))
}

/// An email address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmailBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Sends a password reset link if the address has an account. Answers 202 either way.
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", operation_id = "password_forgot",
    security(()), request_body = EmailBody,
    responses((status = 202, description = "Accepted.", body = Accepted)))]
pub(crate) async fn password_forgot(
    State(state): State<AppState>,
    Client(client): Client,
    Json(body): Json<EmailBody>,
) -> Result<Response, ApiError> {
    state.app.forgot_password(&body.email, &client).await?;
    Ok(accepted())
}

/// A reset token and the new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    token: SecretString,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    new_password: SecretString,
}

/// Sets a new password with the token from a reset link; every session of the account ends.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", operation_id = "password_reset",
    security(()), request_body = ResetBody,
    responses((status = 204, description = "The password is changed.")))]
pub(crate) async fn password_reset(
    State(state): State<AppState>,
    Json(body): Json<ResetBody>,
) -> Result<StatusCode, ApiError> {
    state.app.reset_password(body.token.expose_secret(), body.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The first owner account of a fresh installation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetupBody {
    /// The one-time token the server logged at first start.
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    setup_token: SecretString,
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 128)]
    password: SecretString,
    #[schema(min_length = 1, max_length = 64)]
    display_name: Option<String>,
}

/// Creates the first owner with the setup token logged at first start; refused once any account exists.
#[utoipa::path(post, path = "/v1/auth/setup", tag = "auth", operation_id = "setup", security(()),
    request_body = SetupBody,
    responses((status = 201, description = "The owner account.", body = super::me::ProfileResponse)))]
pub(crate) async fn setup(
    State(state): State<AppState>,
    Json(body): Json<SetupBody>,
) -> Result<Response, ApiError> {
    let profile = state
        .app
        .setup_first_owner(
            body.setup_token.expose_secret(),
            &body.email,
            body.display_name.as_deref(),
            body.password,
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(super::me::ProfileResponse::from(profile))).into_response())
}
