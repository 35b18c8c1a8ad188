//! Entry points for the fuzz targets (docs/fuzzing.md): thin wrappers over checks that are private to
//! the crate, so a target calls exactly what a request runs.

use portcullis_domain::SessionId;
use secrecy::SecretSlice;

use crate::AppError;
use crate::csrf::CsrfKey;

/// The CSRF token a cookie session gets, under a key derived from `instance_secret`.
pub fn csrf_token(instance_secret: &[u8], session: SessionId) -> Result<String, AppError> {
    Ok(CsrfKey::derive(&SecretSlice::from(instance_secret.to_vec()))?.token_for(session))
}

/// Whether `presented` passes the CSRF check of a cookie session, as `App::check_csrf` runs it.
pub fn csrf_token_matches(
    instance_secret: &[u8],
    session: SessionId,
    presented: &str,
) -> Result<bool, AppError> {
    Ok(CsrfKey::derive(&SecretSlice::from(instance_secret.to_vec()))?.verify(session, presented))
}
