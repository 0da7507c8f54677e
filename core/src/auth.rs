//! Credentials: tenant API keys (stored hashed) and user JWTs (HS256, claims `sub`, `tid`,
//! `exp`, signed with the tenant's secret).

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

/// Verify a token against the tenant's secret.
pub fn verify_user_token(token: &str, secret: &str) -> Result<Claims> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 5;
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
                _ => bad_token(format!("invalid token: {e}")),
            }
        })?;
    if data.claims.sub.is_empty() {
        return Err(bad_token("the token has an empty `sub`"));
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
        let c = Claims {
            sub: "u1".into(),
            tid: "t1".into(),
            exp,
        };
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
        assert_eq!(verify_user_token(&t, "s1").unwrap().sub, "u1");
        assert_eq!(
            verify_user_token(&t, "s2").unwrap_err().code,
            "auth_invalid_token"
        );
        let old = token("s1", now - 600);
        assert_eq!(
            verify_user_token(&old, "s1").unwrap_err().code,
            "auth_token_expired"
        );
        assert_eq!(
            unverified_tenant("garbage").unwrap_err().code,
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
