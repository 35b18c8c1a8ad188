//! `/v1/auth/*`: signup, email verification, login, refresh, logout, password reset, first setup.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_app::{AppError, IssuedCredentials, LoginMode, LoginOutcome, SecondFactor, SignupRequest};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Client, Enrolling, PresentedCookie, SESSION_COOKIE, SameOrigin};
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

/// A login whose password was right, for an account with a second factor: no session yet.
#[derive(Serialize, ToSchema)]
pub(crate) struct MfaRequiredResponse {
    /// Always `mfa_required`.
    status: &'static str,
    /// Single use, valid `expires_in` seconds: send it to `POST /v1/auth/mfa/verify` with a factor.
    challenge_token: String,
    /// The factors the account can answer with: `totp`, `passkey`, `recovery_code`.
    methods: Vec<&'static str>,
    expires_in: i64,
}

impl std::fmt::Debug for MfaRequiredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaRequiredResponse").field("methods", &self.methods).finish_non_exhaustive()
    }
}

/// What a login answers: tokens (mode `token`), the CSRF token of a cookie session (mode `cookie`),
/// or, for an account with a second factor, a challenge to answer with it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "describes the login body for the OpenAPI document; the handler builds its parts"
)]
pub(crate) enum LoginResponse {
    Token(TokenResponse),
    Cookie(CookieSessionResponse),
    MfaRequired(MfaRequiredResponse),
}

fn outcome_response(outcome: LoginOutcome) -> Response {
    match outcome {
        LoginOutcome::Authenticated { credentials, .. } => credentials_response(credentials),
        LoginOutcome::MfaRequired(challenge) => axum::Json(MfaRequiredResponse {
            status: "mfa_required",
            challenge_token: challenge.token.expose().to_owned(),
            methods: challenge.methods.iter().map(|m| m.as_str()).collect(),
            expires_in: challenge.expires_in_secs,
        })
        .into_response(),
    }
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
    Ok(outcome_response(outcome))
}

/// A second factor as a request names it: the method and its proof.
#[derive(Debug)]
struct FactorBody {
    method: FactorMethod,
    code: Option<SecretString>,
    credential: Option<serde_json::Value>,
}

/// A kind of second factor.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FactorMethod {
    Totp,
    RecoveryCode,
    Passkey,
}

impl FactorBody {
    /// The factor, or a field error naming what is missing.
    fn factor(self) -> Result<SecondFactor, ApiError> {
        let missing =
            |field: &'static str| ApiError::from(AppError::invalid(field, "is required for this method"));
        Ok(match self.method {
            FactorMethod::Totp => SecondFactor::Totp(self.code.ok_or_else(|| missing("/code"))?),
            FactorMethod::RecoveryCode => {
                SecondFactor::RecoveryCode(self.code.ok_or_else(|| missing("/code"))?)
            }
            FactorMethod::Passkey => {
                SecondFactor::Passkey(self.credential.ok_or_else(|| missing("/credential"))?)
            }
        })
    }
}

/// A login's challenge and the second factor that answers it. (The factor's fields are spelled out,
/// not flattened from [`FactorBody`]: a flattened struct cannot refuse unknown fields, and its
/// OpenAPI rendering would be two closed schemas that no body satisfies.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MfaVerifyBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    challenge_token: SecretString,
    /// `totp`, `recovery_code` or `passkey`.
    method: FactorMethod,
    /// The TOTP code or recovery code (methods `totp`, `recovery_code`).
    #[schema(value_type = Option<String>, max_length = 64)]
    code: Option<SecretString>,
    /// The browser's `PublicKeyCredential` from `navigator.credentials.get` (method `passkey`).
    #[schema(value_type = Option<Object>)]
    credential: Option<serde_json::Value>,
}

/// Finishes a login with its second factor. A wrong factor is 401 `invalid-second-factor` (the
/// challenge stays open for a few tries, each counting toward the account's lockout); an unknown,
/// used or expired challenge is 400 `invalid-token`.
#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "auth", operation_id = "mfa_verify", security(()),
    request_body = MfaVerifyBody,
    responses(
        (status = 200, description = "Logged in, as the login's mode asked.", body = LoginResponse),
        (status = 401, description = "The second factor is wrong.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn mfa_verify(
    State(state): State<AppState>,
    Client(client): Client,
    SameOrigin(same_origin): SameOrigin,
    PresentedCookie(old_cookie): PresentedCookie,
    Json(body): Json<MfaVerifyBody>,
) -> Result<Response, ApiError> {
    let factor = FactorBody { method: body.method, code: body.code, credential: body.credential }.factor()?;
    let outcome = state
        .app
        .complete_login_mfa(body.challenge_token.expose_secret(), factor, same_origin, &client)
        .await?;
    if let (LoginOutcome::Authenticated { credentials: IssuedCredentials::Cookie { .. }, .. }, Some(old)) =
        (&outcome, old_cookie)
    {
        state.app.end_cookie_session(&old).await?;
    }
    Ok(outcome_response(outcome))
}

/// A login's challenge token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChallengeBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    challenge_token: SecretString,
}

/// The WebAuthn assertion options for answering a login's challenge with a passkey: pass them to
/// `navigator.credentials.get`, then send the result to `POST /v1/auth/mfa/verify`.
#[utoipa::path(post, path = "/v1/auth/mfa/passkey-options", tag = "auth", operation_id = "mfa_passkey_options",
    security(()), request_body = ChallengeBody,
    responses((status = 200, description = "`PublicKeyCredentialRequestOptions` (as webauthn-json).",
        body = Object)))]
pub(crate) async fn mfa_passkey_options(
    State(state): State<AppState>,
    Json(body): Json<ChallengeBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(state.app.login_passkey_options(body.challenge_token.expose_secret()).await?))
}

/// Who wants to log in with a passkey alone, and how the session should be held.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasskeyLoginBody {
    #[schema(max_length = 254)]
    email: String,
    #[serde(default)]
    mode: Mode,
}

/// Starts a passwordless login with a passkey (when `mfa.passkey_login` is on): pass `options` to
/// `navigator.credentials.get`, then send the result to `POST /v1/auth/mfa/verify` with method
/// `passkey`. Answers alike whether or not the address has an account with a passkey.
#[utoipa::path(post, path = "/v1/auth/passkey/options", tag = "auth", operation_id = "passkey_login_options",
    security(()), request_body = PasskeyLoginBody,
    responses(
        (status = 200, description = "Assertion options and their challenge.", body = PasskeyOptionsResponse),
        (status = 501, description = "Passwordless passkey login is off, or passkeys are unavailable.",
            body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ))]
pub(crate) async fn passkey_login_options(
    State(state): State<AppState>,
    SameOrigin(same_origin): SameOrigin,
    Client(client): Client,
    Json(body): Json<PasskeyLoginBody>,
) -> Result<axum::Json<PasskeyOptionsResponse>, ApiError> {
    let mode = match body.mode {
        Mode::Token => LoginMode::Bearer,
        Mode::Cookie => {
            if !same_origin {
                state.app.reject_csrf(None, &client).await?;
            }
            LoginMode::Cookie
        }
    };
    Ok(axum::Json(state.app.start_passkey_login(&body.email, mode).await?.into()))
}

/// A re-authentication: the password and a second factor (if the account has one), or a passkey
/// alone (`passkey_challenge_token` from `POST /v1/auth/reauthenticate/passkey-options`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReauthenticateBody {
    #[schema(value_type = Option<String>, format = Password)]
    password: Option<SecretString>,
    method: Option<FactorMethod>,
    #[schema(value_type = Option<String>, max_length = 64)]
    code: Option<SecretString>,
    #[schema(value_type = Option<Object>)]
    credential: Option<serde_json::Value>,
    #[schema(value_type = Option<String>, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    passkey_challenge_token: Option<SecretString>,
}

/// Proves the caller's identity again, so that sensitive actions (which answer 401
/// `reauthentication-required` when the last proof is too old) may go ahead.
#[utoipa::path(post, path = "/v1/auth/reauthenticate", tag = "auth", operation_id = "reauthenticate",
    security(("bearer" = []), ("session_cookie" = [])), request_body = ReauthenticateBody,
    responses((status = 204, description = "The session is freshly authenticated.")))]
pub(crate) async fn reauthenticate(
    State(state): State<AppState>,
    Client(client): Client,
    Enrolling(principal): Enrolling,
    Json(body): Json<ReauthenticateBody>,
) -> Result<StatusCode, ApiError> {
    let factor = match body.method {
        Some(method) => Some(FactorBody { method, code: body.code, credential: body.credential }.factor()?),
        None => None,
    };
    let challenge = body.passkey_challenge_token.as_ref().map(|t| t.expose_secret());
    state.app.reauthenticate(&principal, body.password, factor, challenge, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A passkey assertion for re-authentication.
#[derive(Serialize, ToSchema)]
pub(crate) struct PasskeyOptionsResponse {
    /// Send back with the ceremony's result.
    challenge_token: String,
    /// For `navigator.credentials.get` / `create` (as webauthn-json).
    #[schema(value_type = Object)]
    options: serde_json::Value,
}

impl std::fmt::Debug for PasskeyOptionsResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasskeyOptionsResponse(..)")
    }
}

impl From<portcullis_app::PasskeyOptions> for PasskeyOptionsResponse {
    fn from(options: portcullis_app::PasskeyOptions) -> Self {
        Self { challenge_token: options.challenge.expose().to_owned(), options: options.options }
    }
}

/// Starts re-authenticating the caller's session with a passkey.
#[utoipa::path(post, path = "/v1/auth/reauthenticate/passkey-options", tag = "auth",
    operation_id = "reauthenticate_passkey_options",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "Assertion options and their challenge.", body = PasskeyOptionsResponse)))]
pub(crate) async fn reauthenticate_passkey_options(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
) -> Result<axum::Json<PasskeyOptionsResponse>, ApiError> {
    Ok(axum::Json(state.app.reauthentication_passkey_options(&principal).await?.into()))
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
pub(crate) fn clear_cookie(mut response: Response) -> Response {
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
    Enrolling(principal): Enrolling,
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
    Enrolling(principal): Enrolling,
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
