//! Verification keys (JWKS) and provider metadata (OIDC discovery), cached per URL.
//!
//! - Keys are read lock-free on every verification; a background task refreshes them every
//!   `jwks_refresh`; when the provider is unreachable the cached keys keep working.
//! - An unknown `kid` triggers at most one refetch per `jwks_cooldown`: inside the window, unknown
//!   ids are refused at once (a flood of random `kid`s costs one fetch, not one per token), and
//!   concurrent misses share the single fetch in flight.
//! - Only signature keys are kept: `use` other than `sig`, symmetric (`oct`) keys and keys with
//!   unusable parameters are dropped when the set is parsed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::http_client::{FetchError, IdpClient};
use crate::metrics;

/// A key ready to verify with, and the algorithm the JWK pins it to (if any).
pub struct VerificationKey {
    pub key: DecodingKey,
    pub algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Arc<VerificationKey>>,
    /// Keys without a `kid` (used only when a token has no `kid` either).
    anonymous: Vec<Arc<VerificationKey>>,
}

/// What discovery says about a provider (OpenID Connect Discovery 1.0 §3).
#[derive(Debug, Clone, Default)]
pub struct ProviderMetadata {
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key with this id")]
    UnknownKey,
    #[error("the identity provider's keys cannot be fetched: {0}")]
    Unavailable(String),
}

/// Where keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    Jwks(String),
    Discovery(String),
}

pub struct KeySource {
    origin: Origin,
    client: Arc<IdpClient>,
    keys: ArcSwap<KeySet>,
    metadata: ArcSwapOption<ProviderMetadata>,
    started: Instant,
    /// Milliseconds after `started` of the last fetch attempt (0 = never).
    last_attempt_ms: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
    cooldown: Duration,
}

impl KeySource {
    pub fn new(origin: Origin, client: Arc<IdpClient>, cooldown: Duration) -> Self {
        KeySource {
            origin,
            client,
            keys: ArcSwap::default(),
            metadata: ArcSwapOption::empty(),
            started: Instant::now(),
            last_attempt_ms: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            cooldown,
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "never".
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn lookup(&self, kid: Option<&str>) -> Option<Arc<VerificationKey>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.by_id.get(kid).cloned(),
            None if keys.anonymous.len() == 1 && keys.by_id.is_empty() => keys.anonymous.first().cloned(),
            None => None,
        }
    }

    /// The key for `kid`, refetching at most once per cool-down when it is unknown.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<VerificationKey>, KeyError> {
        if let Some(found) = self.lookup(kid) {
            return Ok(found);
        }
        let attempt = self.last_attempt_ms.load(Ordering::Acquire);
        let cooling = attempt != 0 && self.now_ms().saturating_sub(attempt) < self.cooldown.as_millis() as u64;
        // Waits for a fetch under way (the first one after start or reload, a periodic refresh)
        // rather than refusing a token whose key it is about to bring.
        let _guard = self.fetching.lock().await;
        if cooling {
            return self.lookup(kid).ok_or(KeyError::UnknownKey);
        }
        // Someone else may have fetched while this one waited.
        if self.last_attempt_ms.load(Ordering::Acquire) == attempt {
            self.fetch()
                .await
                .map_err(|error| KeyError::Unavailable(error.to_string()))?;
        }
        self.lookup(kid).ok_or(KeyError::UnknownKey)
    }

    /// Provider metadata (discovery), fetched on first use.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, KeyError> {
        if let Some(metadata) = self.metadata.load_full() {
            return Ok(metadata);
        }
        match &self.origin {
            Origin::Jwks(_) => Ok(Arc::new(ProviderMetadata::default())),
            Origin::Discovery(url) => {
                let _guard = self.fetching.lock().await;
                if let Some(metadata) = self.metadata.load_full() {
                    return Ok(metadata);
                }
                let metadata = Arc::new(
                    self.fetch_metadata(url)
                        .await
                        .map_err(|error| KeyError::Unavailable(error.to_string()))?,
                );
                self.metadata.store(Some(metadata.clone()));
                Ok(metadata)
            }
        }
    }

    async fn fetch_metadata(&self, url: &str) -> Result<ProviderMetadata, FetchError> {
        let document = self.client.get_json(url).await;
        count(&document);
        let document = document?;
        let text = |key: &str| document.get(key).and_then(|value| value.as_str()).map(str::to_owned);
        Ok(ProviderMetadata {
            issuer: text("issuer"),
            authorization_endpoint: text("authorization_endpoint"),
            token_endpoint: text("token_endpoint"),
            jwks_uri: text("jwks_uri"),
            end_session_endpoint: text("end_session_endpoint"),
            revocation_endpoint: text("revocation_endpoint"),
        })
    }

    /// Fetches the key set (and, for discovery, the metadata) now. On failure the cached keys
    /// stay. Lookups of unknown keys wait for it.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _guard = self.fetching.lock().await;
        self.fetch().await
    }

    /// [`Self::refresh`], with `fetching` already held.
    async fn fetch(&self) -> Result<(), FetchError> {
        self.last_attempt_ms.store(self.now_ms(), Ordering::Release);
        let jwks_url = match &self.origin {
            Origin::Jwks(url) => url.clone(),
            Origin::Discovery(url) => {
                let metadata = self.fetch_metadata(url).await?;
                let jwks = metadata
                    .jwks_uri
                    .clone()
                    .ok_or(FetchError::Body("discovery has no jwks_uri".into()))?;
                self.metadata.store(Some(Arc::new(metadata)));
                jwks
            }
        };
        let document = self.client.get_json(&jwks_url).await;
        count(&document);
        let set: JwkSet = serde_json::from_value(serde_json::Value::Object(document?))
            .map_err(|error| FetchError::Body(format!("not a JWK set: {error}")))?;
        self.keys.store(Arc::new(parse_set(&set)));
        Ok(())
    }
}

fn count<T>(outcome: &Result<T, FetchError>) {
    let label = if outcome.is_ok() { "success" } else { "failure" };
    metrics::global().jwks_fetches.with_label_values(&[label]).inc();
}

fn parse_set(set: &JwkSet) -> KeySet {
    let mut keys = KeySet::default();
    for jwk in &set.keys {
        let Some(key) = verification_key(jwk) else {
            tracing::debug!(kid = ?jwk.common.key_id, "JWK skipped: not an asymmetric signature key");
            continue;
        };
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_id.insert(kid.clone(), Arc::new(key));
            }
            None => keys.anonymous.push(Arc::new(key)),
        }
    }
    keys
}

fn verification_key(jwk: &Jwk) -> Option<VerificationKey> {
    if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
        return None;
    }
    if matches!(
        jwk.algorithm,
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
    ) {
        return None;
    }
    let algorithm = match &jwk.common.key_algorithm {
        None => None,
        Some(algorithm) => Some(algorithm.to_string().parse::<Algorithm>().ok()?),
    };
    if matches!(algorithm, Some(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerificationKey { key, algorithm })
}

/// Refreshes `source` every `interval` until it is dropped.
pub async fn run_refresh(source: Weak<KeySource>, interval: Duration) {
    loop {
        let Some(current) = source.upgrade() else { return };
        if let Err(error) = current.refresh().await {
            tracing::warn!(origin = ?current.origin(), %error, "key refresh failed; cached keys stay in use");
        }
        drop(current);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_asymmetric_signature_keys() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig", "alg": "ES256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            { "kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "EC", "crv": "P-256", "kid": "hs", "alg": "HS256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }
        ]}))
        .unwrap();
        let keys = parse_set(&set);
        assert_eq!(keys.by_id.keys().collect::<Vec<_>>(), ["ec"]);
        assert_eq!(keys.by_id["ec"].algorithm, Some(Algorithm::ES256));
    }

    #[tokio::test]
    async fn unknown_kids_fetch_at_most_once_per_cooldown() {
        // Nothing listens on this port: every fetch fails fast, and is counted by attempts.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let source = KeySource::new(
            Origin::Jwks(format!("http://127.0.0.1:{port}/jwks")),
            Arc::new(IdpClient::new()),
            Duration::from_secs(60),
        );
        assert!(matches!(source.key(Some("a")).await, Err(KeyError::Unavailable(_))));
        let first_attempt = source.last_attempt_ms.load(Ordering::Acquire);
        for kid in ["b", "c", "d"] {
            assert_eq!(source.key(Some(kid)).await.err(), Some(KeyError::UnknownKey));
        }
        assert_eq!(
            source.last_attempt_ms.load(Ordering::Acquire),
            first_attempt,
            "no fetch inside the cool-down"
        );
    }

    #[tokio::test]
    async fn a_lookup_during_a_fetch_waits_for_its_keys() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A key server that takes 200 ms to answer, like an IdP at start-up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let body = serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig", "alg": "ES256",
              "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" }
        ]})
        .to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 2048];
                    let _ = stream.read(&mut request).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        let source = Arc::new(KeySource::new(
            Origin::Jwks(format!("http://{address}/jwks")),
            Arc::new(IdpClient::new()),
            Duration::from_secs(60),
        ));
        let background = tokio::spawn({
            let source = source.clone();
            async move { source.refresh().await }
        });
        // The background fetch has started (and stamped its attempt) before the lookup.
        while source.last_attempt_ms.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            source.key(Some("ec")).await.is_ok(),
            "a token arriving while the keys are being fetched is not refused"
        );
        background.await.unwrap().unwrap();
    }
}
