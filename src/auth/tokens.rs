//! JWT verification (RFC 8725) for bearer tokens and ID tokens, and the verified-token cache.
//!
//! Checks, in order: structure and header; `alg` in the application's allow-list (asymmetric
//! only; never `none`, never HS*); `typ` when configured; the key by `kid` (refetched at most once
//! per cool-down); the key's own `alg` when the JWK pins one; the signature; `exp`/`nbf`/`iat`
//! with the configured leeway; `iss` against the configured issuers (rendered for the token's
//! tenant); `aud` or `client_id`/`azp`; `sub`.
//!
//! Verified bearer tokens are cached by SHA-256 of the token until `exp`, per worker thread (no
//! lock on the hot path). The cache holds the claims, not a decision: the tenant check against the
//! request's host runs on every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::{KeyError, KeySource};
use super::{AuthError, InvalidReason};

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Shared with every request the token is accepted on (its access log line).
    pub subject: Arc<str>,
    pub email: Option<Box<str>>,
    /// The tenant claim (a tenant id), if present.
    pub tenant: Option<Box<str>>,
    pub client_id: Option<Box<str>>,
    pub expires_at: u64,
    pub nonce: Option<Box<str>>,
}

/// Whom the token must be for.
pub enum Audience<'a> {
    /// Access tokens: `aud` intersects these, or `client_id`/`azp` is one of them.
    AnyOf(&'a [Box<str>]),
    /// ID tokens: `aud` contains the client id (and `azp`, if present, equals it).
    Client(&'a str),
}

/// Everything one verification needs.
pub struct Verifier<'a> {
    pub keys: &'a KeySource,
    pub algorithms: &'a [Algorithm],
    pub token_type: Option<&'a str>,
    pub issuers: &'a [crate::config::UrlTemplate],
    pub leeway: u64,
    pub tenant_claim: &'a str,
    /// Tenant id → domain name, to render `{tenant_domain}` issuers for the token's tenant.
    pub tenant_domain_of: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn invalid(reason: InvalidReason) -> AuthError {
    AuthError::InvalidToken(reason)
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<Box<str>> {
    claims.get(name).and_then(Value::as_str).map(Into::into)
}

impl Verifier<'_> {
    pub async fn verify(&self, token: &str, audience: Audience<'_>) -> Result<Claims, AuthError> {
        if token.len() > 16 * 1024 || token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(invalid(InvalidReason::Malformed));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid(InvalidReason::Malformed))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(invalid(InvalidReason::Algorithm));
        }
        if let Some(expected) = self.token_type {
            let actual = header.typ.as_deref().unwrap_or_default();
            let actual = actual.strip_prefix("application/").unwrap_or(actual);
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(invalid(InvalidReason::Type));
            }
        }
        let key = match self.keys.key(header.kid.as_deref()).await {
            Ok(key) => key,
            Err(KeyError::UnknownKey) => return Err(invalid(InvalidReason::UnknownKey)),
            Err(KeyError::Unavailable(_)) => return Err(AuthError::ProviderUnavailable),
        };
        if key.algorithm.is_some_and(|pinned| pinned != header.alg) {
            return Err(invalid(InvalidReason::Algorithm));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = ["exp".to_owned(), "iss".to_owned(), "sub".to_owned()].into();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match error.kind() {
                ErrorKind::ExpiredSignature => InvalidReason::Expired,
                ErrorKind::ImmatureSignature => InvalidReason::NotYetValid,
                ErrorKind::InvalidSignature => InvalidReason::Signature,
                ErrorKind::InvalidAlgorithm => InvalidReason::Algorithm,
                ErrorKind::MissingRequiredClaim(_) => InvalidReason::Claims,
                _ => InvalidReason::Malformed,
            })
        })?;
        let claims = data.claims;
        if let Some(issued) = claims.get("iat").and_then(Value::as_u64)
            && issued > unix_now() + self.leeway
        {
            return Err(invalid(InvalidReason::NotYetValid));
        }
        let tenant = string_claim(&claims, self.tenant_claim);
        let issuer = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
        let tenant_domain = tenant.as_deref().and_then(|id| (self.tenant_domain_of)(id));
        if !self
            .issuers
            .iter()
            .any(|template| template.matches(issuer, tenant_domain))
        {
            return Err(invalid(InvalidReason::Issuer));
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let authorized_party = claims.get("azp").and_then(Value::as_str);
        let client_id = claims.get("client_id").and_then(Value::as_str).or(authorized_party);
        let audience_ok = match audience {
            Audience::AnyOf(accepted) => {
                let accepts = |value: &str| accepted.iter().any(|candidate| &**candidate == value);
                audiences.iter().any(|value| accepts(value)) || client_id.is_some_and(accepts)
            }
            Audience::Client(client) => {
                audiences.contains(&client) && authorized_party.is_none_or(|party| party == client)
            }
        };
        if !audience_ok {
            return Err(invalid(InvalidReason::Audience));
        }
        let subject: Arc<str> = string_claim(&claims, "sub")
            .filter(|s| !s.is_empty())
            .ok_or(invalid(InvalidReason::Claims))?
            .into();
        Ok(Claims {
            subject,
            email: string_claim(&claims, "email"),
            tenant,
            client_id: client_id.map(Into::into),
            expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or_default(),
            nonce: string_claim(&claims, "nonce"),
        })
    }
}

/// SHA-256 of a token: the cache key (the token itself is never kept as a key).
pub fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Verified tokens of one worker thread, keyed by token digest.
struct ThreadCache<T> {
    entries: HashMap<[u8; 32], (u64, u64, Arc<T>), ahash::RandomState>,
}

/// Entries per worker thread before expired ones are swept (and, if still full, all dropped).
pub const CACHE_ENTRIES_PER_THREAD: usize = 50_000;

thread_local! {
    static TOKENS: RefCell<ThreadCache<super::VerifiedToken>> =
        RefCell::new(ThreadCache { entries: HashMap::default() });
}

/// A cached verification for `owner` (an application's auth generation) that has not expired.
pub fn cached(digest: &[u8; 32], owner: u64, now: u64) -> Option<Arc<super::VerifiedToken>> {
    TOKENS.with(|cache| {
        let cache = cache.borrow();
        let (entry_owner, expires_at, token) = cache.entries.get(digest)?;
        (*entry_owner == owner && now < *expires_at).then(|| token.clone())
    })
}

pub fn remember(digest: [u8; 32], owner: u64, expires_at: u64, token: Arc<super::VerifiedToken>) {
    TOKENS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let gauge = &crate::metrics::global().token_cache_entries;
        if cache.entries.len() >= CACHE_ENTRIES_PER_THREAD {
            let before = cache.entries.len();
            let now = unix_now();
            cache.entries.retain(|_, (_, expires, _)| *expires > now);
            if cache.entries.len() >= CACHE_ENTRIES_PER_THREAD {
                cache.entries.clear();
            }
            gauge.sub((before - cache.entries.len()) as i64);
        }
        if cache.entries.insert(digest, (owner, expires_at, token)).is_none() {
            gauge.inc();
        }
    });
}
