//! User authentication: an HS256 JWT signed with the tenant's secret.

use tidings_core::auth::{unverified_tenant, verify_user_token};
use tidings_core::{Context, Error, Result};

/// A verified user.
#[derive(Debug, Clone)]
pub struct User {
    pub tenant: String,
    pub user: String,
    /// When the token expires, seconds since the epoch: a connection closes then.
    pub expires_at: i64,
    /// The tag of the secret that verified the token (`auth::secret_tag`).
    pub credential: u64,
}

/// Check `token` against the secret of the tenant it names.
pub async fn verify(ctx: &Context, token: &str) -> Result<User> {
    let tid = unverified_tenant(token)?;
    let tenant = ctx
        .hot
        .tenant(ctx.store.as_ref(), &tid)
        .await?
        .ok_or_else(|| {
            Error::unauthorized("auth_invalid_token", "the token names an unknown tenant")
        })?;
    let max = ctx.config.auth.max_token_lifetime_seconds;
    let (claims, expires_at, credential) = match verify_user_token(token, &tenant.jwt_secret, max) {
        // within a rotation's overlap, tokens signed with the replaced secret still count,
        // and a connection opened with one closes when the overlap ends
        Err(e) if e.code == "auth_invalid_token" => {
            match tenant.previous_at(tidings_core::model::now_ms()) {
                Some(p) => {
                    let c = verify_user_token(token, &p.jwt_secret, max).map_err(|_| e)?;
                    let end = c.exp.min(p.until_ms / 1000);
                    (c, end, tidings_core::auth::secret_tag(&p.jwt_secret))
                }
                None => return Err(e),
            }
        }
        other => {
            let c = other?;
            let exp = c.exp;
            (c, exp, tidings_core::auth::secret_tag(&tenant.jwt_secret))
        }
    };
    if tenant.disabled {
        return Err(tidings_core::http::tenant_disabled());
    }
    if claims.tid != tenant.id {
        return Err(Error::unauthorized("auth_invalid_token", "tenant mismatch"));
    }
    Ok(User {
        tenant: tenant.id,
        user: claims.sub,
        expires_at,
        credential,
    })
}

/// The user of a request with `Authorization: Bearer <jwt>`.
pub async fn from_headers(ctx: &Context, headers: &axum::http::HeaderMap) -> Result<User> {
    let token = tidings_core::http::bearer(headers).ok_or_else(|| {
        Error::unauthorized(
            "auth_missing",
            "send the user token as `Authorization: Bearer <jwt>`",
        )
    })?;
    verify(ctx, token).await
}
