//! `/v1/me/mfa/*`: the caller's second factors (TOTP authenticators, passkeys, recovery codes), and
//! the administrators' side: resetting an account's factors, an organization's MFA policy. A session
//! that must enroll a factor before anything else may use the `me` routes (they take [`Enrolling`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_app::{MfaFactors, RecoveryCodes, TotpEnrollment};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::PasskeyOptionsResponse;
use crate::AppState;
use crate::auth::{Authenticated, Enrolling};
use crate::error::ApiError;
use crate::extract::Json;

/// One second-factor device (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MfaDeviceResponse {
    id: String,
    /// `totp` or `passkey`.
    method: &'static str,
    name: String,
    created_at: String,
    last_used_at: Option<String>,
    /// A TOTP authenticator counts once its first code confirmed it.
    confirmed: bool,
}

/// The caller's second factors.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MfaFactorsResponse {
    devices: Vec<MfaDeviceResponse>,
    recovery_codes_left: u64,
    /// Whether the account must use a second factor (by role or organization).
    required: bool,
}

impl From<MfaFactors> for MfaFactorsResponse {
    fn from(f: MfaFactors) -> Self {
        Self {
            devices: f
                .devices
                .into_iter()
                .map(|d| MfaDeviceResponse {
                    id: d.id.to_string(),
                    method: d.method.as_str(),
                    name: d.name,
                    created_at: d.created_at.to_rfc3339(),
                    last_used_at: d.last_used_at.map(|t| t.to_rfc3339()),
                    confirmed: d.confirmed,
                })
                .collect(),
            recovery_codes_left: f.recovery_codes_left,
            required: f.required,
        }
    }
}

/// The caller's second factors.
#[utoipa::path(get, path = "/v1/me/mfa", tag = "me", operation_id = "list_my_mfa",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The factors.", body = MfaFactorsResponse)))]
pub(crate) async fn list_my_mfa(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
) -> Result<axum::Json<MfaFactorsResponse>, ApiError> {
    Ok(axum::Json(state.app.mfa_factors(&principal).await?.into()))
}

/// A device's name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceNameBody {
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

/// A TOTP enrollment: the secret, shown only now. Its `Debug` shows the id only.
#[derive(Serialize, ToSchema)]
pub(crate) struct TotpEnrollmentResponse {
    id: String,
    /// The seed, base 32.
    secret: String,
    /// `otpauth://totp/...` for authenticator apps.
    otpauth_uri: String,
    /// The URI as a QR code (an SVG document).
    qr_svg: String,
}

impl std::fmt::Debug for TotpEnrollmentResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrollmentResponse").field("id", &self.id).finish_non_exhaustive()
    }
}

impl From<TotpEnrollment> for TotpEnrollmentResponse {
    fn from(e: TotpEnrollment) -> Self {
        Self {
            id: e.id.to_string(),
            secret: e.secret.expose_secret().to_owned(),
            otpauth_uri: e.otpauth_uri.expose_secret().to_owned(),
            qr_svg: e.qr_svg.expose_secret().to_owned(),
        }
    }
}

/// Starts enrolling an authenticator app; confirm it with a code. Needs a recent authentication.
#[utoipa::path(post, path = "/v1/me/mfa/totp", tag = "me", operation_id = "enroll_totp",
    security(("bearer" = []), ("session_cookie" = [])), request_body = DeviceNameBody,
    responses((status = 201, description = "The secret, shown only now.", body = TotpEnrollmentResponse)))]
pub(crate) async fn enroll_totp(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
    Json(body): Json<DeviceNameBody>,
) -> Result<Response, ApiError> {
    let enrollment = state.app.enroll_totp(&principal, &body.name).await?;
    Ok((StatusCode::CREATED, axum::Json(TotpEnrollmentResponse::from(enrollment))).into_response())
}

/// A code from the authenticator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodeBody {
    #[schema(value_type = String, max_length = 16)]
    code: SecretString,
}

/// Recovery codes, shown only now. Its `Debug` shows how many.
#[derive(Serialize, ToSchema)]
pub(crate) struct RecoveryCodesResponse {
    /// Ten single-use codes; each works once in place of the authenticator.
    recovery_codes: Option<Vec<String>>,
}

impl std::fmt::Debug for RecoveryCodesResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodesResponse({:?})", self.recovery_codes.as_ref().map(Vec::len))
    }
}

fn codes(codes: Option<RecoveryCodes>) -> RecoveryCodesResponse {
    RecoveryCodesResponse { recovery_codes: codes.map(|c| c.codes().map(str::to_owned).collect()) }
}

/// Confirms an authenticator with its current code. The account's first factor answers with its
/// recovery codes (shown only now); later ones with `null`.
#[utoipa::path(post, path = "/v1/me/mfa/totp/{id}/confirm", tag = "me", operation_id = "confirm_totp",
    security(("bearer" = []), ("session_cookie" = [])), request_body = CodeBody,
    params(("id" = String, Path, description = "The authenticator's id.")),
    responses((status = 200, description = "Confirmed.", body = RecoveryCodesResponse)))]
pub(crate) async fn confirm_totp(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
    Path(id): Path<String>,
    Json(body): Json<CodeBody>,
) -> Result<axum::Json<RecoveryCodesResponse>, ApiError> {
    Ok(axum::Json(codes(state.app.confirm_totp(&principal, &id, &body.code).await?)))
}

/// Removes an authenticator. Needs a recent authentication.
#[utoipa::path(delete, path = "/v1/me/mfa/totp/{id}", tag = "me", operation_id = "remove_totp",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The authenticator's id.")),
    responses((status = 204, description = "Removed.")))]
pub(crate) async fn remove_totp(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.remove_totp(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new set of recovery codes; the old set stops working. Needs a recent authentication.
#[utoipa::path(post, path = "/v1/me/mfa/recovery-codes", tag = "me", operation_id = "regenerate_recovery_codes",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "The new codes, shown only now.", body = RecoveryCodesResponse)))]
pub(crate) async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<axum::Json<RecoveryCodesResponse>, ApiError> {
    Ok(axum::Json(codes(Some(state.app.regenerate_recovery_codes(&principal).await?))))
}

/// Starts registering a passkey: pass `options` to `navigator.credentials.create`. Needs a recent
/// authentication.
#[utoipa::path(post, path = "/v1/me/mfa/passkeys/options", tag = "me", operation_id = "passkey_registration_options",
    security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "Creation options and their challenge.", body = PasskeyOptionsResponse)))]
pub(crate) async fn passkey_registration_options(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
) -> Result<axum::Json<PasskeyOptionsResponse>, ApiError> {
    Ok(axum::Json(state.app.start_passkey_registration(&principal).await?.into()))
}

/// The authenticator's answer to a registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasskeyRegistrationBody {
    #[schema(value_type = String, min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    challenge_token: SecretString,
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// The `PublicKeyCredential` from `navigator.credentials.create` (as webauthn-json).
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

/// A registered passkey, with the recovery codes when it is the account's first factor.
#[derive(Serialize, ToSchema)]
pub(crate) struct PasskeyRegisteredResponse {
    id: String,
    #[serde(flatten)]
    codes: RecoveryCodesResponse,
}

impl std::fmt::Debug for PasskeyRegisteredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyRegisteredResponse").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Finishes registering a passkey.
#[utoipa::path(post, path = "/v1/me/mfa/passkeys", tag = "me", operation_id = "register_passkey",
    security(("bearer" = []), ("session_cookie" = [])), request_body = PasskeyRegistrationBody,
    responses((status = 201, description = "Registered.", body = PasskeyRegisteredResponse)))]
pub(crate) async fn register_passkey(
    State(state): State<AppState>,
    Enrolling(principal): Enrolling,
    Json(body): Json<PasskeyRegistrationBody>,
) -> Result<Response, ApiError> {
    let (id, recovery) = state
        .app
        .finish_passkey_registration(
            &principal,
            body.challenge_token.expose_secret(),
            &body.name,
            body.credential,
        )
        .await?;
    let response = PasskeyRegisteredResponse { id: id.to_string(), codes: codes(recovery) };
    Ok((StatusCode::CREATED, axum::Json(response)).into_response())
}

/// Removes a passkey. Needs a recent authentication.
#[utoipa::path(delete, path = "/v1/me/mfa/passkeys/{id}", tag = "me", operation_id = "remove_passkey",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The passkey's id.")),
    responses((status = 204, description = "Removed.")))]
pub(crate) async fn remove_passkey(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.app.remove_passkey(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How many factors an administrator's reset removed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MfaResetResponse {
    removed: u64,
}

/// Removes every second factor of an account (lost devices) and ends its sessions. Needs
/// `users:write` and a recent authentication.
#[utoipa::path(delete, path = "/v1/admin/users/{id}/mfa", tag = "admin", operation_id = "reset_user_mfa",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The account id.")),
    responses((status = 200, description = "Reset.", body = MfaResetResponse)))]
pub(crate) async fn reset_user_mfa(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<MfaResetResponse>, ApiError> {
    Ok(axum::Json(MfaResetResponse { removed: state.app.admin_reset_mfa(&principal, &id).await? }))
}

/// An organization's MFA policy.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MfaPolicyBody {
    /// Whether every member must use a second factor.
    required: bool,
}

/// Whether an organization requires a second factor of its members. Needs `orgs:read` there.
#[utoipa::path(get, path = "/v1/admin/organizations/{id}/mfa-policy", tag = "admin",
    operation_id = "get_organization_mfa_policy",
    security(("bearer" = []), ("session_cookie" = [])),
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 200, description = "The policy.", body = MfaPolicyBody)))]
pub(crate) async fn get_organization_mfa_policy(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<MfaPolicyBody>, ApiError> {
    Ok(axum::Json(MfaPolicyBody { required: state.app.admin_organization_mfa(&principal, &id).await? }))
}

/// Sets whether an organization requires a second factor of its members (from their next login).
/// Needs `orgs:write` there and a recent authentication.
#[utoipa::path(put, path = "/v1/admin/organizations/{id}/mfa-policy", tag = "admin",
    operation_id = "set_organization_mfa_policy",
    security(("bearer" = []), ("session_cookie" = [])), request_body = MfaPolicyBody,
    params(("id" = String, Path, description = "The organization id.")),
    responses((status = 200, description = "The policy.", body = MfaPolicyBody)))]
pub(crate) async fn set_organization_mfa_policy(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Path(id): Path<String>,
    Json(body): Json<MfaPolicyBody>,
) -> Result<axum::Json<MfaPolicyBody>, ApiError> {
    state.app.admin_set_organization_mfa(&principal, &id, body.required).await?;
    Ok(axum::Json(body))
}
