//! Authentication and per-tenant authorization.
//!
//! Contract, for every request to a non-public path of an application with an identity provider:
//! - `Authorization: Bearer` → the JWT is verified (see [`tokens`]), then its tenant claim must be
//!   the host's tenant: another tenant's token is a 403, never a pass. API callers always get a
//!   401/403 with `WWW-Authenticate` and a JSON body, never a redirect.
//! - Otherwise the session cookie (sealed per host, see [`cookies`]) must open on this host and
//!   belong to this application and tenant; it rolls, and is refreshed before the access token
//!   expires. A missing, tampered or foreign session sends a browser navigation to `/auth/login`.
//! - `/auth/login`, `/auth/callback`, `/auth/logout` run the OIDC authorization code flow with
//!   PKCE (S256), state and nonce (RFC 9700), see [`login`].
//! - The upstream gets `x-user-id`, `x-user-email`, `x-idp-name`, `x-client-id` and, when
//!   configured, the access token and an assertion JWT signed with the edge's key (published at
//!   [`EDGE_JWKS_PATH`]).
//! - Tokens, cookies and secrets are never logged.

pub mod cookies;
pub mod crypto;
pub mod http_client;
pub mod keys;
mod login;
pub mod session;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use dashmap::DashMap;
use http::HeaderValue;
use prometheus::IntCounter;

use crate::config::{
    Application, AssertionSettings, IdentityProvider, KeySource as KeyConfig, SessionSettings, Snapshot, Tenant,
};
use crate::metrics;
use crate::ops::supervisor::ReloadObserver;
use crate::proxy::headers::IdentityValues;
use crate::tenancy::{HostKind, Route, VanityZone};
use keys::{KeySource, Origin};
use session::SessionStore;
use tokens::{Audience, Claims, Verifier, unix_now};

/// Where the edge publishes the public key of its assertions.
pub const EDGE_JWKS_PATH: &str = "/.well-known/vestibule/jwks.json";
pub const LOGIN_PATH: &str = "/auth/login";
pub const CALLBACK_PATH: &str = "/auth/callback";
pub const LOGOUT_PATH: &str = "/auth/logout";

/// Why a token did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Malformed,
    Algorithm,
    Type,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Claims,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Malformed => "malformed token",
            InvalidReason::Algorithm => "algorithm not accepted",
            InvalidReason::Type => "wrong token type",
            InvalidReason::UnknownKey => "unknown signing key",
            InvalidReason::Signature => "bad signature",
            InvalidReason::Expired => "token expired",
            InvalidReason::NotYetValid => "token not yet valid",
            InvalidReason::Issuer => "issuer not accepted",
            InvalidReason::Audience => "audience not accepted",
            InvalidReason::Claims => "required claims missing",
        }
    }
}

/// Why a request was not authenticated or not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is required")]
    MissingCredentials,
    #[error("the token is not valid: {}", .0.as_str())]
    InvalidToken(InvalidReason),
    #[error("the credentials belong to another tenant")]
    WrongTenant,
    #[error("credentials bound to a tenant are required here")]
    TenantRequired,
    #[error("no tenant with this domain")]
    UnknownTenant,
    #[error("the identity provider cannot be reached")]
    ProviderUnavailable,
    #[error("login failed: {0}")]
    LoginFailed(&'static str),
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingCredentials | AuthError::InvalidToken(_) | AuthError::LoginFailed(_) => 401,
            AuthError::WrongTenant | AuthError::TenantRequired => 403,
            AuthError::UnknownTenant => 404,
            AuthError::ProviderUnavailable => 503,
        }
    }

    /// RFC 6750 §3 challenge for 401/403 answers to bearer requests.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthError::MissingCredentials => Some("Bearer".into()),
            AuthError::InvalidToken(reason) => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                reason.as_str()
            )),
            AuthError::WrongTenant | AuthError::TenantRequired => Some("Bearer error=\"insufficient_scope\"".into()),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::WrongTenant => "wrong_tenant",
            AuthError::TenantRequired => "tenant_required",
            AuthError::UnknownTenant => "unknown_tenant",
            AuthError::ProviderUnavailable => "provider_unavailable",
            AuthError::LoginFailed(_) => "login_failed",
        }
    }
}

/// Authentication outcomes (metric label values).
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    BearerVerified,
    BearerCached,
    Session,
    SessionRefreshed,
    Missing,
    Invalid,
    WrongTenant,
    ProviderUnavailable,
    LoginStarted,
    LoginCompleted,
    LoginFailed,
    RefreshFailed,
    Logout,
}

const OUTCOMES: [&str; 13] = [
    "bearer_verified",
    "bearer_cached",
    "session",
    "session_refreshed",
    "missing_credentials",
    "invalid",
    "wrong_tenant",
    "provider_unavailable",
    "login_started",
    "login_completed",
    "login_failed",
    "refresh_failed",
    "logout",
];

/// A request as authentication sees it.
pub struct AuthRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Normalized host (no port).
    pub host: &'a str,
    /// Host as sent, with port: used to build absolute URLs back to this host.
    pub authority: &'a str,
    pub tls: bool,
    pub headers: &'a http::HeaderMap,
    pub route: Route,
    pub application: &'a Application,
}

impl AuthRequest<'_> {
    fn tenant(&self) -> Option<&Tenant> {
        self.route.tenant.map(|index| &self.application.tenants[index as usize])
    }

    fn origin(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }

    /// A browser navigation (as opposed to an API call): gets redirects instead of 401s.
    fn is_navigation(&self) -> bool {
        if self.headers.contains_key(http::header::AUTHORIZATION) {
            return false;
        }
        if let Some(mode) = self.headers.get("sec-fetch-mode") {
            return mode.as_bytes() == b"navigate";
        }
        matches!(*self.method, http::Method::GET | http::Method::HEAD)
            && self
                .headers
                .get(http::header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"))
    }
}

/// An authenticated caller, as forwarded upstream.
pub struct Identity {
    pub values: IdentityValues,
    pub user_id: Arc<str>,
    /// On an application-level host: the tenant the token belongs to.
    pub tenant: Option<u32>,
}

/// A response the edge writes itself.
pub struct EdgeResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl EdgeResponse {
    pub fn redirect(location: String, set_cookies: Vec<String>) -> Self {
        let mut headers = vec![("location", location)];
        headers.extend(set_cookies.into_iter().map(|cookie| ("set-cookie", cookie)));
        EdgeResponse {
            status: 302,
            headers,
            body: Bytes::new(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        EdgeResponse {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: Bytes::from(body.to_string()),
        }
    }
}

/// What the proxy does next.
// Lives briefly on the stack; boxing the identity would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    Forward {
        identity: Option<Identity>,
        set_cookies: Vec<String>,
    },
    Respond(EdgeResponse),
    Reject {
        error: AuthError,
        set_cookies: Vec<String>,
    },
}

/// A verified bearer token, cached per worker thread until it expires.
pub struct VerifiedToken {
    pub claims: Claims,
    values: IdentityValues,
    /// The last assertion made for this token and when it expires.
    assertion: ArcSwapOption<(HeaderValue, u64)>,
}

/// State that outlives configuration reloads: HTTP client, key caches, the edge's key.
pub struct AuthService {
    client: Arc<http_client::IdpClient>,
    sources: DashMap<Origin, Arc<KeySource>>,
    refreshing: DashMap<Origin, Arc<AtomicBool>>,
    edge_key: crypto::EdgeKey,
    edge_jwks: Bytes,
    generation: AtomicU64,
    refreshes: login::RefreshFlights,
}

impl AuthService {
    /// `assertion` picks the edge key; changing it needs a restart.
    pub fn new(assertion: &AssertionSettings) -> Result<Self, crypto::EdgeKeyError> {
        crypto::install();
        let edge_key = match &assertion.private_key {
            Some(pkcs8) => crypto::EdgeKey::from_pkcs8(pkcs8.expose()),
            None => crypto::EdgeKey::generate(),
        }
        .map_err(|_| crypto::EdgeKeyError)?;
        let edge_jwks = Bytes::from(edge_key.jwks().to_string());
        Ok(AuthService {
            client: Arc::new(http_client::IdpClient::new()),
            sources: DashMap::new(),
            refreshing: DashMap::new(),
            edge_key,
            edge_jwks,
            generation: AtomicU64::new(1),
            refreshes: login::RefreshFlights::default(),
        })
    }

    /// The JWKS of the edge's assertion key.
    pub fn edge_jwks(&self) -> Bytes {
        self.edge_jwks.clone()
    }

    fn source(&self, origin: Origin, provider: &IdentityProvider) -> Arc<KeySource> {
        let source = self
            .sources
            .entry(origin.clone())
            .or_insert_with(|| {
                Arc::new(KeySource::new(
                    origin.clone(),
                    self.client.clone(),
                    provider.jwks_cooldown,
                ))
            })
            .clone();
        // Background refresh, once per source, when a runtime is there to run it.
        let flag = self.refreshing.entry(origin).or_default().clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && !flag.swap(true, Ordering::AcqRel)
        {
            handle.spawn(keys::run_refresh(Arc::downgrade(&source), provider.jwks_refresh));
        }
        source
    }

    /// Per-snapshot authentication of an application (None without an identity provider).
    pub fn application(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        application: &Application,
    ) -> Option<Arc<ApplicationAuth>> {
        let provider = application.identity.clone()?;
        let app_metrics = &metrics::global().auth_outcomes;
        let outcomes = OUTCOMES.map(|outcome| app_metrics.with_label_values(&[&application.id, outcome]));
        let sealer = snapshot
            .session
            .as_ref()
            .map(|settings| Arc::new(cookies::Sealer::new(&settings.secrets)));
        let store: Option<Arc<dyn SessionStore>> =
            snapshot.session.as_ref().zip(sealer.clone()).map(|(settings, sealer)| {
                Arc::new(session::CookieStore::new(sealer, settings)) as Arc<dyn SessionStore>
            });
        let header = |text: &str| HeaderValue::from_str(text).ok();
        let auth = ApplicationAuth {
            id: self.generation.fetch_add(1, Ordering::Relaxed),
            service: self.clone(),
            application_id: application.id.clone(),
            idp_name: header(&provider.name),
            client_id: provider.client_id.as_deref().and_then(header),
            tenant_by_id: application
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i as u32))
                .collect(),
            tenant_by_domain: application
                .tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.domain_name.clone(), i as u32))
                .collect(),
            tenants: application
                .tenants
                .iter()
                .map(|t| (t.id.clone(), t.domain_name.clone()))
                .collect(),
            zone: snapshot.zone.clone(),
            custom_domain: application.custom_domain.clone(),
            login_url: application.login_url.clone(),
            tenant_discovery_url: application.tenant_discovery_url.clone(),
            accepted_audiences: provider
                .audiences
                .iter()
                .cloned()
                .chain(provider.client_id.clone())
                .collect(),
            store,
            sealer,
            session: snapshot.session.clone(),
            assertion: snapshot.assertion.clone(),
            outcomes,
            shared_source: match &provider.keys {
                KeyConfig::Jwks(url) if !url.has_token() => {
                    Some(self.source(Origin::Jwks(url.render(None)), &provider))
                }
                KeyConfig::Discovery(url) if !url.has_token() => {
                    Some(self.source(Origin::Discovery(url.render(None)), &provider))
                }
                _ => None,
            },
            provider,
        };
        Some(Arc::new(auth))
    }

    /// Drops key caches no application of `snapshot` uses any more.
    fn prune(&self, snapshot: &Snapshot) {
        let used: std::collections::HashSet<Origin> = snapshot
            .applications
            .iter()
            .filter_map(|application| Some((application, application.identity.as_ref()?)))
            .flat_map(|(application, provider)| {
                let (url, discovery) = match &provider.keys {
                    KeyConfig::Jwks(url) => (url, false),
                    KeyConfig::Discovery(url) => (url, true),
                };
                let mut origins = Vec::new();
                // Per-tenant key URLs: only this application's tenants can have used them.
                let domains: Vec<Option<&str>> = if url.has_token() {
                    application.tenants.iter().map(|t| Some(&*t.domain_name)).collect()
                } else {
                    vec![None]
                };
                for domain in domains {
                    let rendered = url.render(domain);
                    origins.push(if discovery {
                        Origin::Discovery(rendered)
                    } else {
                        Origin::Jwks(rendered)
                    });
                }
                origins
            })
            .collect();
        self.sources.retain(|origin, _| used.contains(origin));
        self.refreshing.retain(|origin, _| used.contains(origin));
    }
}

impl ReloadObserver for AuthService {
    fn snapshot_applied(&self, snapshot: &Arc<Snapshot>) {
        self.prune(snapshot);
        // Start background refresh for every fixed key source (templated ones start on first use).
        for application in &snapshot.applications {
            if let Some(provider) = &application.identity {
                match &provider.keys {
                    KeyConfig::Jwks(url) if !url.has_token() => {
                        self.source(Origin::Jwks(url.render(None)), provider);
                    }
                    KeyConfig::Discovery(url) if !url.has_token() => {
                        self.source(Origin::Discovery(url.render(None)), provider);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One application's authentication, built per snapshot.
pub struct ApplicationAuth {
    /// Distinct per build: cached verifications of an older configuration never apply.
    id: u64,
    service: Arc<AuthService>,
    application_id: Box<str>,
    provider: Arc<IdentityProvider>,
    idp_name: Option<HeaderValue>,
    client_id: Option<HeaderValue>,
    tenant_by_id: HashMap<Box<str>, u32>,
    tenant_by_domain: HashMap<Box<str>, u32>,
    /// (id, domain name) per tenant index.
    tenants: Vec<(Box<str>, Box<str>)>,
    zone: VanityZone,
    custom_domain: Option<Box<str>>,
    login_url: Option<crate::config::UrlTemplate>,
    tenant_discovery_url: Option<crate::config::UrlTemplate>,
    /// Accepted `aud` (and `client_id`/`azp`) values: the audiences plus the client id.
    accepted_audiences: Vec<Box<str>>,
    store: Option<Arc<dyn SessionStore>>,
    sealer: Option<Arc<cookies::Sealer>>,
    session: Option<SessionSettings>,
    assertion: AssertionSettings,
    outcomes: [IntCounter; 13],
    /// The key source when its URL has no `{tenant_domain}`.
    shared_source: Option<Arc<KeySource>>,
}

impl ApplicationAuth {
    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
    }

    /// The key source for a tenant (per-tenant URLs are resolved on first use).
    fn keys_for(&self, tenant_domain: Option<&str>) -> Option<Arc<KeySource>> {
        if let Some(shared) = &self.shared_source {
            return Some(shared.clone());
        }
        let origin = match &self.provider.keys {
            KeyConfig::Jwks(url) => Origin::Jwks(url.render(Some(tenant_domain?))),
            KeyConfig::Discovery(url) => Origin::Discovery(url.render(Some(tenant_domain?))),
        };
        Some(self.service.source(origin, &self.provider))
    }

    fn tenant_domain_of_id(&self, id: &str) -> Option<&str> {
        self.tenant_by_id.get(id).map(|&index| &*self.tenants[index as usize].1)
    }

    fn verifier<'a>(
        &'a self,
        keys: &'a KeySource,
        tenant_domain_of: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    ) -> Verifier<'a> {
        Verifier {
            keys,
            algorithms: &self.provider.algorithms,
            token_type: self.provider.token_type.as_deref(),
            issuers: &self.provider.issuers,
            leeway: self.provider.leeway.as_secs(),
            tenant_claim: &self.provider.tenant_claim,
            tenant_domain_of,
        }
    }

    /// Runs authentication for one request.
    pub async fn handle(&self, request: &AuthRequest<'_>) -> Decision {
        // The login flows and the session store are boxed: they call out to the identity
        // provider or the store (large futures), and would otherwise be part of every connection's
        // request future, also on the bearer-token path.
        if self.provider.login_enabled() && self.store.is_some() {
            match request.path {
                LOGIN_PATH => return Box::pin(login::start(self, request)).await,
                CALLBACK_PATH => return Box::pin(login::callback(self, request)).await,
                LOGOUT_PATH => return Box::pin(login::logout(self, request)).await,
                _ => {}
            }
        }
        if request.application.is_public(request.path) {
            return Decision::Forward {
                identity: None,
                set_cookies: Vec::new(),
            };
        }
        if let Some(authorization) = request.headers.get(http::header::AUTHORIZATION) {
            return match self.bearer(request, authorization).await {
                Ok(identity) => Decision::Forward {
                    identity: Some(identity),
                    set_cookies: Vec::new(),
                },
                Err(error) => {
                    self.count(match error {
                        AuthError::WrongTenant | AuthError::TenantRequired => Outcome::WrongTenant,
                        AuthError::ProviderUnavailable => Outcome::ProviderUnavailable,
                        _ => Outcome::Invalid,
                    });
                    Decision::Reject {
                        error,
                        set_cookies: Vec::new(),
                    }
                }
            };
        }
        let mut set_cookies = Vec::new();
        if let Some(store) = &self.store {
            match Box::pin(login::session(self, store.as_ref(), request)).await {
                login::SessionCheck::Valid { identity, set_cookies } => {
                    return Decision::Forward {
                        identity: Some(identity),
                        set_cookies,
                    };
                }
                login::SessionCheck::Ended { clear } => set_cookies = clear,
                login::SessionCheck::Absent => {}
            }
        }
        self.count(Outcome::Missing);
        if request.is_navigation() && self.provider.login_enabled() && self.store.is_some() {
            let target = match request.query {
                Some(query) => format!("{}?{query}", request.path),
                None => request.path.to_owned(),
            };
            let location = format!(
                "{LOGIN_PATH}?return_to={}",
                url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
            );
            return Decision::Respond(EdgeResponse::redirect(location, set_cookies));
        }
        Decision::Reject {
            error: AuthError::MissingCredentials,
            set_cookies,
        }
    }

    async fn bearer(&self, request: &AuthRequest<'_>, authorization: &HeaderValue) -> Result<Identity, AuthError> {
        let value = authorization
            .to_str()
            .map_err(|_| AuthError::InvalidToken(InvalidReason::Malformed))?;
        let token = value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::InvalidToken(InvalidReason::Malformed))?;
        let verified = self
            .verify_bearer(token, request.tenant().map(|t| &*t.domain_name))
            .await?;
        let tenant = self.authorize_tenant(verified.claims.tenant.as_deref(), request)?;
        let mut values = verified.values.clone();
        if self.provider.forward_assertion {
            values.assertion = self.cached_assertion(&verified, request, tenant);
        }
        Ok(Identity {
            values,
            user_id: verified.claims.subject.clone(),
            tenant,
        })
    }

    /// Verifies a bearer token, using the per-thread cache.
    pub async fn verify_bearer(
        &self,
        token: &str,
        host_tenant_domain: Option<&str>,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        let digest = tokens::digest(token);
        let now = unix_now();
        if let Some(hit) = tokens::cached(&digest, self.id, now) {
            self.count(Outcome::BearerCached);
            return Ok(hit);
        }
        // Boxed: the cold path may fetch keys (a large future); the cached path above is the hot one.
        let claims = Box::pin(self.verify_uncached(token, host_tenant_domain)).await?;
        let header = |text: &str| HeaderValue::from_str(text).ok();
        let values = IdentityValues {
            user_id: header(&claims.subject),
            user_email: claims.email.as_deref().and_then(header),
            idp_name: self.idp_name.clone(),
            client_id: claims.client_id.as_deref().and_then(header),
            access_token: if self.provider.forward_access_token {
                header(token)
            } else {
                None
            },
            assertion: None,
        };
        let expires_at = claims.expires_at;
        let verified = Arc::new(VerifiedToken {
            claims,
            values,
            assertion: ArcSwapOption::empty(),
        });
        tokens::remember(digest, self.id, expires_at, verified.clone());
        self.count(Outcome::BearerVerified);
        Ok(verified)
    }

    /// Full verification of a bearer token, without the cache (the cold path).
    pub async fn verify_uncached(&self, token: &str, host_tenant_domain: Option<&str>) -> Result<Claims, AuthError> {
        let keys = self.keys_for(host_tenant_domain).ok_or(AuthError::TenantRequired)?;
        let lookup = |id: &str| self.tenant_domain_of_id(id);
        self.verifier(&keys, &lookup)
            .verify(token, Audience::AnyOf(&self.accepted_audiences))
            .await
    }

    /// The tenant check: the identity's tenant must be the host's. Returns the tenant to forward
    /// on an application-level host.
    fn authorize_tenant(&self, claimed: Option<&str>, request: &AuthRequest<'_>) -> Result<Option<u32>, AuthError> {
        match (request.tenant(), claimed) {
            (Some(host_tenant), Some(claimed)) if *host_tenant.id == *claimed => Ok(None),
            (Some(_), Some(_)) => Err(AuthError::WrongTenant),
            (Some(_), None) => Err(AuthError::TenantRequired),
            (None, Some(claimed)) => self
                .tenant_by_id
                .get(claimed)
                .map(|&index| Some(index))
                .ok_or(AuthError::WrongTenant),
            (None, None) if self.provider.allow_tokens_without_tenant => Ok(None),
            (None, None) => Err(AuthError::TenantRequired),
        }
    }

    /// An assertion for a verified token, re-signed only when the cached one nears expiry.
    fn cached_assertion(
        &self,
        verified: &VerifiedToken,
        request: &AuthRequest<'_>,
        tenant: Option<u32>,
    ) -> Option<HeaderValue> {
        let now = unix_now();
        if let Some(cached) = verified.assertion.load_full()
            && cached.1 > now + self.assertion.lifetime.as_secs() / 4
        {
            return Some(cached.0.clone());
        }
        let tenant_id = tenant
            .map(|index| &*self.tenants[index as usize].0)
            .or_else(|| request.tenant().map(|t| &*t.id));
        let (value, expires) = self.sign_assertion(
            &verified.claims.subject,
            verified.claims.email.as_deref(),
            tenant_id,
            verified.claims.client_id.as_deref(),
        )?;
        verified.assertion.store(Some(Arc::new((value.clone(), expires))));
        Some(value)
    }

    /// Signs an assertion of the identity for the upstream (ES256, the edge's key).
    fn sign_assertion(
        &self,
        subject: &str,
        email: Option<&str>,
        tenant: Option<&str>,
        client_id: Option<&str>,
    ) -> Option<(HeaderValue, u64)> {
        let now = unix_now();
        let expires = now + self.assertion.lifetime.as_secs();
        let claims = serde_json::json!({
            "iss": &*self.assertion.issuer,
            "aud": &*self.application_id,
            "sub": subject,
            "email": email,
            "tnt_id": tenant,
            "idp": &*self.provider.name,
            "client_id": client_id,
            "iat": now,
            "exp": expires,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.service.edge_key.key_id.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.service.edge_key.encoding).ok()?;
        Some((HeaderValue::from_str(&token).ok()?, expires))
    }

    /// The host a tenant logs in at, in the same form as the application-level host of `request`.
    fn tenant_host(&self, request: &AuthRequest<'_>, tenant_domain: &str) -> Option<String> {
        match request.route.kind {
            HostKind::ApplicationCustomDomain => Some(format!("{tenant_domain}.{}", self.custom_domain.as_deref()?)),
            HostKind::ApplicationVanity => Some(self.zone.tenant_host(tenant_domain, &request.application.domain_name)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_challenges() {
        assert_eq!(AuthError::MissingCredentials.status(), 401);
        assert_eq!(AuthError::WrongTenant.status(), 403);
        assert_eq!(AuthError::InvalidToken(InvalidReason::Expired).status(), 401);
        assert_eq!(
            AuthError::InvalidToken(InvalidReason::Expired)
                .www_authenticate()
                .unwrap(),
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(OUTCOMES.len(), Outcome::Logout as usize + 1);
    }
}
