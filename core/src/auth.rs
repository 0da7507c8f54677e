//! Credentials: tenant API keys (stored hashed) and user JWTs (HS256, claims `sub`, `tid`,
//! `exp`, optionally `nbf` and `iat`, signed with the tenant's secret). A token not yet valid
//! (`nbf`) is refused, and so is one whose lifetime (`exp` from `iat`, or from now) is longer
//! than `auth.max_token_lifetime_seconds`.

use crate::error::{Error, Result};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Random URL-safe token with a readable prefix (`tk_…` API keys, `js_…` JWT secrets).
pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// What the store keeps of an API key.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A short tag naming a secret without revealing it: connections remember the tag of the
/// secret that verified them, so a rotation can close those whose secret is no longer valid.
pub fn secret_tag(secret: &str) -> u64 {
    let d = Sha256::digest(secret.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Constant-time comparison of two secrets.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The claims of a user token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub tid: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
}

/// Read the tenant id of a token without trusting it yet.
pub fn unverified_tenant(token: &str) -> Result<String> {
    let header = decode_header(token).map_err(|e| bad_token(format!("malformed token: {e}")))?;
    if header.alg != Algorithm::HS256 {
        return Err(bad_token("token must be signed with HS256"));
    }
    let mut v = Validation::new(Algorithm::HS256);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.required_spec_claims.clear();
    let data = decode::<Claims>(token, &DecodingKey::from_secret(b""), &v)
        .map_err(|e| bad_token(format!("malformed claims: {e}")))?;
    Ok(data.claims.tid)
}

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY: u64 = 5;

/// Verify a token against the tenant's secret; its lifetime may be at most `max_lifetime`
/// seconds.
pub fn verify_user_token(token: &str, secret: &str, max_lifetime: i64) -> Result<Claims> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    let data =
        decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::unauthorized("auth_token_expired", "the token has expired")
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    bad_token("the token's signature does not match its tenant")
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    Error::unauthorized("auth_token_not_yet_valid", "the token's `nbf` is ahead")
                }
                _ => bad_token(format!("invalid token: {e}")),
            }
        })?;
    if data.claims.sub.is_empty() {
        return Err(bad_token("the token has an empty `sub`"));
    }
    let now = crate::model::now_ms() / 1000;
    if data.claims.iat.is_some_and(|iat| iat > now + LEEWAY as i64) {
        return Err(bad_token("the token's `iat` is in the future"));
    }
    let start = data.claims.iat.unwrap_or(now).min(now);
    if data.claims.exp.saturating_sub(start) > max_lifetime {
        return Err(Error::unauthorized(
            "auth_token_lifetime",
            format!("the token lives longer than {max_lifetime} s; issue shorter-lived tokens"),
        ));
    }
    Ok(data.claims)
}

fn bad_token(m: impl Into<String>) -> Error {
    Error::unauthorized("auth_invalid_token", m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, exp: i64) -> String {
        claims_token(
            secret,
            Claims {
                sub: "u1".into(),
                tid: "t1".into(),
                exp,
                nbf: None,
                iat: None,
            },
        )
    }

    fn claims_token(secret: &str, c: Claims) -> String {
        encode(
            &Header::default(),
            &c,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn good_expired_and_foreign_tokens() {
        let now = crate::model::now_ms() / 1000;
        let t = token("s1", now + 60);
        assert_eq!(unverified_tenant(&t).unwrap(), "t1");
        assert_eq!(verify_user_token(&t, "s1", 3600).unwrap().sub, "u1");
        assert_eq!(
            verify_user_token(&t, "s2", 3600).unwrap_err().code,
            "auth_invalid_token"
        );
        let old = token("s1", now - 600);
        assert_eq!(
            verify_user_token(&old, "s1", 3600).unwrap_err().code,
            "auth_token_expired"
        );
        assert_eq!(
            unverified_tenant("garbage").unwrap_err().code,
            "auth_invalid_token"
        );
    }

    #[test]
    fn nbf_iat_and_lifetime_are_honoured() {
        let now = crate::model::now_ms() / 1000;
        let c = |exp: i64, nbf: Option<i64>, iat: Option<i64>| Claims {
            sub: "u1".into(),
            tid: "t1".into(),
            exp,
            nbf,
            iat,
        };
        let code = |c: Claims| {
            verify_user_token(&claims_token("s", c), "s", 3600)
                .map(|_| "ok")
                .unwrap_or_else(|e| e.code)
        };
        assert_eq!(code(c(now + 60, Some(now - 10), Some(now - 10))), "ok");
        assert_eq!(
            code(c(now + 600, Some(now + 300), None)),
            "auth_token_not_yet_valid"
        );
        assert_eq!(code(c(i64::MAX, None, None)), "auth_token_lifetime");
        assert_eq!(code(c(now + 7200, None, None)), "auth_token_lifetime");
        assert_eq!(
            code(c(now + 60, None, Some(now - 7200))),
            "auth_token_lifetime"
        );
        assert_eq!(
            code(c(now + 60, None, Some(now + 600))),
            "auth_invalid_token"
        );
    }

    #[test]
    fn api_keys_hash_and_compare() {
        let k = random_token("tk_");
        assert!(k.starts_with("tk_") && k.len() == 51);
        assert_eq!(hash_api_key(&k), hash_api_key(&k));
        assert!(secrets_equal("abc", "abc") && !secrets_equal("abc", "abd"));
    }
}
