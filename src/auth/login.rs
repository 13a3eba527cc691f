//! The browser side: OIDC authorization code flow with PKCE, and a session's life after it.
//!
//! - `/auth/login`: state, nonce and an S256 PKCE verifier go into a short-lived sealed cookie
//!   (one per pending login, at most [`MAX_PENDING_LOGINS`], oldest dropped), then a redirect to
//!   the tenant's authorize URL. `return_to` is kept only if it is a same-host relative path.
//! - `/auth/callback`: the state must match a pending login of this host; the code is exchanged
//!   (client secret, HTTP Basic), the ID token verified (signature, `iss`, `aud`, `nonce`, tenant)
//!   and the session created. A missing or wrong state sends the browser back to login with a
//!   reason, never to an error page.
//! - Sessions roll, and are refreshed with the refresh token before the access token expires
//!   (one refresh per session in flight, bounded retries); a failed refresh ends the session.
//! - `/auth/logout`: cookies cleared, the refresh token revoked where the provider supports it,
//!   then the tenant-level logout with the application's login URL as the return.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use http::HeaderValue;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::cookies::{self, RequestCookies, set_cookie};
use super::http_client::{FetchError, JsonResponse};
use super::session::{Exchange, Session, SessionStore, SessionTokens};
use super::tokens::{Audience, unix_now};
use super::{
    ApplicationAuth, AuthError, AuthRequest, CALLBACK_PATH, Decision, EdgeResponse, Identity, LOGIN_PATH, Outcome,
};
use crate::proxy::headers::IdentityValues;

/// Pending logins kept per host; a new one beyond this drops the oldest.
pub const MAX_PENDING_LOGINS: usize = 3;
/// Longest `return_to` kept.
const MAX_RETURN_TO: usize = 2048;
/// Attempts at a refresh (the second only after a transport failure or a 5xx).
const REFRESH_ATTEMPTS: usize = 2;
/// How long a finished refresh is shared with requests that still carry the old cookie.
const REFRESH_SHARE: Duration = Duration::from_secs(60);
/// Access-token lifetime assumed when the provider does not say (`expires_in` absent).
const DEFAULT_ACCESS_LIFETIME: u64 = 300;
/// Deadline of the best-effort revocation at logout.
const REVOCATION_TIMEOUT: Duration = Duration::from_secs(3);

fn random(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS RNG failing leaves nothing safe to do: refuse rather than use a weak value.
    if SystemRandom::new().fill(&mut buffer).is_err() {
        panic!("the system random number generator failed");
    }
    URL_SAFE_NO_PAD.encode(buffer)
}

fn sha256_b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A same-host relative path, or nothing (open-redirect defense).
pub fn safe_return_to(value: &str) -> Option<&str> {
    let bytes = value.as_bytes();
    let acceptable = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/') | Some(b'\\'))
        && value.len() <= MAX_RETURN_TO
        && !value.chars().any(|c| c.is_control() || c == '\\');
    acceptable.then_some(value)
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    // A repeated parameter is ambiguous: refuse it rather than pick one.
    let mut found = pairs.iter().filter(|(key, _)| key == name);
    let first = found.next()?;
    found.next().is_none().then_some(first.1.as_str())
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{query}")
}

#[derive(Serialize, Deserialize)]
struct PendingLogin {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    created: u64,
}

fn pending_prefix(base: &str, tls: bool) -> String {
    cookies::cookie_name(&format!("{base}-login-"), tls)
}

fn pending_name(base: &str, tls: bool, state: &str) -> String {
    format!("{}{}", pending_prefix(base, tls), &sha256_b64(state)[..12])
}

fn redirect_to_login(reason: &str) -> Decision {
    Decision::Respond(EdgeResponse::redirect(
        format!("{LOGIN_PATH}?reason={reason}&return_to=%2F"),
        Vec::new(),
    ))
}

/// Provider endpoints for a tenant: configured template first, discovery second.
struct Endpoints {
    authorize: Option<String>,
    token: Option<String>,
    logout: Option<String>,
    revocation: Option<String>,
}

async fn endpoints(auth: &ApplicationAuth, tenant_domain: &str) -> Result<Endpoints, AuthError> {
    let provider = &auth.provider;
    let render =
        |template: &Option<crate::config::UrlTemplate>| template.as_ref().map(|t| t.render(Some(tenant_domain)));
    let mut endpoints = Endpoints {
        authorize: render(&provider.authorize_url),
        token: render(&provider.token_url),
        logout: render(&provider.logout_url),
        revocation: render(&provider.revocation_url),
    };
    if matches!(provider.keys, crate::config::KeySource::Discovery(_))
        && (endpoints.authorize.is_none()
            || endpoints.token.is_none()
            || endpoints.logout.is_none()
            || endpoints.revocation.is_none())
    {
        let keys = auth.keys_for(Some(tenant_domain)).ok_or(AuthError::TenantRequired)?;
        let metadata = keys.metadata().await.map_err(|_| AuthError::ProviderUnavailable)?;
        endpoints.authorize = endpoints.authorize.or_else(|| metadata.authorization_endpoint.clone());
        endpoints.token = endpoints.token.or_else(|| metadata.token_endpoint.clone());
        endpoints.logout = endpoints.logout.or_else(|| metadata.end_session_endpoint.clone());
        endpoints.revocation = endpoints.revocation.or_else(|| metadata.revocation_endpoint.clone());
    }
    Ok(endpoints)
}

fn client(auth: &ApplicationAuth) -> Option<(&str, &str)> {
    Some((
        auth.provider.client_id.as_deref()?,
        auth.provider.client_secret.as_ref()?.expose_str(),
    ))
}

/// `/auth/login`.
pub(super) async fn start(auth: &ApplicationAuth, request: &AuthRequest<'_>) -> Decision {
    let pairs = query_pairs(request.query);
    let return_to = param(&pairs, "return_to")
        .and_then(safe_return_to)
        .unwrap_or("/")
        .to_owned();
    let cookies = RequestCookies::new(request.headers.get_all(http::header::COOKIE).iter());
    let Some(tenant) = request.tenant() else {
        // Application-level host: sessions are per tenant host, so log in there.
        if let Some(domain) = param(&pairs, "tenant_domain") {
            let domain = domain.to_ascii_lowercase();
            if !auth.tenant_by_domain.contains_key(domain.as_str()) {
                return Decision::Reject {
                    error: AuthError::UnknownTenant,
                    set_cookies: Vec::new(),
                };
            }
            let Some(host) = auth.tenant_host(request, &domain) else {
                return Decision::Reject {
                    error: AuthError::TenantRequired,
                    set_cookies: Vec::new(),
                };
            };
            let port = request
                .authority
                .rsplit_once(':')
                .map(|(_, port)| format!(":{port}"))
                .unwrap_or_default();
            let scheme = if request.tls { "https" } else { "http" };
            let location = with_query(
                &format!("{scheme}://{host}{port}{LOGIN_PATH}"),
                &[("return_to", &return_to)],
            );
            return Decision::Respond(EdgeResponse::redirect(location, Vec::new()));
        }
        if let Some(discovery) = &auth.tenant_discovery_url {
            let location = with_query(&discovery.render(None), &[("return_to", &return_to)]);
            return Decision::Respond(EdgeResponse::redirect(location, Vec::new()));
        }
        return Decision::Reject {
            error: AuthError::TenantRequired,
            set_cookies: Vec::new(),
        };
    };
    // Back from a failed callback without any cookie: cookies are blocked; stop the loop here.
    if param(&pairs, "reason").is_some() && cookies.iter().next().is_none() {
        auth.count(Outcome::LoginFailed);
        return Decision::Reject {
            error: AuthError::LoginFailed("this browser does not keep cookies"),
            set_cookies: Vec::new(),
        };
    }
    let (Some(store_settings), Some((client_id, _))) = (&auth.session, client(auth)) else {
        return Decision::Reject {
            error: AuthError::MissingCredentials,
            set_cookies: Vec::new(),
        };
    };
    let endpoints = match endpoints(auth, &tenant.domain_name).await {
        Ok(endpoints) => endpoints,
        Err(error) => {
            return Decision::Reject {
                error,
                set_cookies: Vec::new(),
            };
        }
    };
    let Some(authorize) = endpoints.authorize else {
        return Decision::Reject {
            error: AuthError::ProviderUnavailable,
            set_cookies: Vec::new(),
        };
    };
    let now = unix_now();
    let pending = PendingLogin {
        state: random(32),
        nonce: random(32),
        verifier: random(32),
        return_to,
        created: now,
    };
    let mut set_cookies = Vec::new();
    // At most MAX_PENDING_LOGINS at once: drop the oldest beyond that.
    let prefix = pending_prefix(&store_settings.cookie_name, request.tls);
    let Some(sealer) = auth.sealer.as_deref() else {
        return Decision::Reject {
            error: AuthError::MissingCredentials,
            set_cookies: Vec::new(),
        };
    };
    let mut existing: Vec<(u64, String)> = cookies
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, value)| {
            let created = sealer
                .open(request.host, name, value)
                .and_then(|plain| serde_json::from_slice::<PendingLogin>(&plain).ok())
                .map_or(0, |pending| pending.created);
            (created, name.to_owned())
        })
        .collect();
    existing.sort();
    while existing.len() >= MAX_PENDING_LOGINS {
        let (_, oldest) = existing.remove(0);
        set_cookies.push(set_cookie(&oldest, "", request.tls, None));
    }
    let name = pending_name(&store_settings.cookie_name, request.tls, &pending.state);
    let Some(sealed) = serde_json::to_vec(&pending)
        .ok()
        .and_then(|json| sealer.seal(request.host, &name, &json))
    else {
        return Decision::Reject {
            error: AuthError::LoginFailed("cannot seal the login state"),
            set_cookies,
        };
    };
    set_cookies.push(set_cookie(
        &name,
        &sealed,
        request.tls,
        Some(store_settings.login_state_timeout),
    ));
    let redirect_uri = format!("{}{CALLBACK_PATH}", request.origin());
    let scope = auth.provider.scopes.join(" ");
    let challenge = sha256_b64(&pending.verifier);
    let location = with_query(
        &authorize,
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", &scope),
            ("state", &pending.state),
            ("nonce", &pending.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    auth.count(Outcome::LoginStarted);
    Decision::Respond(EdgeResponse::redirect(location, set_cookies))
}

/// Parsed token endpoint answer.
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    expires_in: u64,
}

fn token_answer(response: &JsonResponse) -> Option<TokenAnswer> {
    if response.status != 200 {
        return None;
    }
    let body = &response.body;
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let token_type = text("token_type")?;
    if !token_type.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(TokenAnswer {
        access_token: text("access_token").filter(|t| !t.is_empty())?,
        refresh_token: text("refresh_token"),
        id_token: text("id_token"),
        expires_in: body
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(DEFAULT_ACCESS_LIFETIME),
    })
}

/// `/auth/callback`.
pub(super) async fn callback(auth: &ApplicationAuth, request: &AuthRequest<'_>) -> Decision {
    let pairs = query_pairs(request.query);
    let Some(tenant) = request.tenant() else {
        return Decision::Reject {
            error: AuthError::TenantRequired,
            set_cookies: Vec::new(),
        };
    };
    let (Some(store), Some(settings), Some(client)) = (&auth.store, &auth.session, client(auth)) else {
        return Decision::Reject {
            error: AuthError::MissingCredentials,
            set_cookies: Vec::new(),
        };
    };
    let Some(state) = param(&pairs, "state") else {
        auth.count(Outcome::LoginFailed);
        return redirect_to_login("missing_state");
    };
    let cookies = RequestCookies::new(request.headers.get_all(http::header::COOKIE).iter());
    let name = pending_name(&settings.cookie_name, request.tls, state);
    let Some(sealer) = auth.sealer.as_deref() else {
        return Decision::Reject {
            error: AuthError::MissingCredentials,
            set_cookies: Vec::new(),
        };
    };
    let pending = cookies
        .get(&name)
        .and_then(|value| sealer.open(request.host, &name, value))
        .and_then(|plain| serde_json::from_slice::<PendingLogin>(&plain).ok());
    let now = unix_now();
    let Some(pending) = pending.filter(|p| constant_time_eq(&p.state, state)) else {
        auth.count(Outcome::LoginFailed);
        return redirect_to_login("state_mismatch");
    };
    let clear_pending = vec![set_cookie(&name, "", request.tls, None)];
    if now > pending.created + settings.login_state_timeout.as_secs() {
        auth.count(Outcome::LoginFailed);
        return redirect_to_login("login_expired");
    }
    let fail = |reason: &'static str| {
        auth.count(Outcome::LoginFailed);
        Decision::Reject {
            error: AuthError::LoginFailed(reason),
            set_cookies: clear_pending.clone(),
        }
    };
    if param(&pairs, "error").is_some() {
        return fail("the identity provider refused the login");
    }
    // RFC 9207: when the provider names itself, it must be the expected one (mix-up defense).
    if let Some(issuer) = param(&pairs, "iss")
        && !auth
            .provider
            .issuers
            .iter()
            .any(|template| template.matches(issuer, Some(&tenant.domain_name)))
    {
        return fail("the authorization response came from another issuer");
    }
    let Some(code) = param(&pairs, "code") else {
        return fail("the authorization response has no code");
    };
    let endpoints = match endpoints(auth, &tenant.domain_name).await {
        Ok(endpoints) => endpoints,
        Err(error) => {
            return Decision::Reject {
                error,
                set_cookies: clear_pending,
            };
        }
    };
    let Some(token_url) = endpoints.token else {
        return fail("no token endpoint");
    };
    let redirect_uri = format!("{}{CALLBACK_PATH}", request.origin());
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let answer = match auth.service.client.post_form(&token_url, client, &form).await {
        Ok(response) => token_answer(&response),
        Err(error) => {
            tracing::warn!(%error, "authorization code exchange failed");
            return Decision::Reject {
                error: AuthError::ProviderUnavailable,
                set_cookies: clear_pending,
            };
        }
    };
    let Some(answer) = answer else {
        return fail("the code exchange was refused");
    };
    let Some(id_token) = answer.id_token.as_deref() else {
        return fail("no ID token");
    };
    let Some(keys) = auth.keys_for(Some(&tenant.domain_name)) else {
        return fail("no keys for this tenant");
    };
    let lookup = |id: &str| auth.tenant_domain_of_id(id);
    let claims = match auth
        .verifier(&keys, &lookup)
        .verify(id_token, Audience::Client(client.0))
        .await
    {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(%error, "ID token rejected");
            return fail("the ID token is not valid");
        }
    };
    if !claims
        .nonce
        .as_deref()
        .is_some_and(|nonce| constant_time_eq(nonce, &pending.nonce))
    {
        return fail("the ID token nonce does not match");
    }
    if claims.tenant.as_deref().is_some_and(|claimed| claimed != &*tenant.id) {
        auth.count(Outcome::WrongTenant);
        return Decision::Reject {
            error: AuthError::WrongTenant,
            set_cookies: clear_pending,
        };
    }
    let mut session = Session::new(
        random(18),
        &auth.application_id,
        Some(&tenant.id),
        claims.subject.to_string(),
        claims.email.as_deref().map(str::to_owned),
        now,
        settings,
    );
    session.access_expires = now + answer.expires_in;
    session.refreshable = answer.refresh_token.is_some();
    let tokens = SessionTokens {
        sid: session.sid.clone(),
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
        id_token: answer.id_token,
    };
    let exchange = Exchange {
        host: request.host,
        tls: request.tls,
        cookies: &cookies,
    };
    let mut set_cookies = store.save(&exchange, &session, Some(&tokens), now);
    set_cookies.extend(clear_pending);
    auth.count(Outcome::LoginCompleted);
    Decision::Respond(EdgeResponse::redirect(pending.return_to, set_cookies))
}

/// `/auth/logout`.
pub(super) async fn logout(auth: &ApplicationAuth, request: &AuthRequest<'_>) -> Decision {
    let cookies = RequestCookies::new(request.headers.get_all(http::header::COOKIE).iter());
    let exchange = Exchange {
        host: request.host,
        tls: request.tls,
        cookies: &cookies,
    };
    let tenant_domain = request.tenant().map(|t| &*t.domain_name);
    let mut set_cookies = Vec::new();
    let mut id_token = None;
    if let Some(store) = &auth.store {
        let session = store.load(&exchange);
        let tokens = session
            .as_ref()
            .and_then(|session| store.load_tokens(&exchange, session));
        set_cookies = store.clear(&exchange);
        if let (Some(tokens), Some(domain), Some(client)) = (tokens, tenant_domain, client(auth)) {
            id_token = tokens.id_token.clone();
            if let (
                Some(refresh),
                Ok(Endpoints {
                    revocation: Some(revocation),
                    ..
                }),
            ) = (tokens.refresh_token.as_deref(), endpoints(auth, domain).await)
            {
                let form = [("token", refresh), ("token_type_hint", "refresh_token")];
                let revoked = tokio::time::timeout(
                    REVOCATION_TIMEOUT,
                    auth.service.client.post_form(&revocation, client, &form),
                )
                .await;
                if !matches!(revoked, Ok(Ok(ref response)) if response.status == 200) {
                    tracing::warn!("refresh token revocation at logout did not succeed");
                }
            }
        }
    }
    let post_logout = auth
        .login_url
        .as_ref()
        .map(|template| template.render(tenant_domain))
        .unwrap_or_else(|| format!("{}/", request.origin()));
    let logout_endpoint = match tenant_domain {
        Some(domain) => endpoints(auth, domain)
            .await
            .ok()
            .and_then(|endpoints| endpoints.logout),
        None => None,
    };
    let location = match logout_endpoint {
        Some(endpoint) => {
            let mut pairs = vec![("post_logout_redirect_uri", post_logout.as_str())];
            if let Some(client) = auth.provider.client_id.as_deref() {
                pairs.push(("client_id", client));
            }
            if let Some(hint) = id_token.as_deref() {
                pairs.push(("id_token_hint", hint));
            }
            with_query(&endpoint, &pairs)
        }
        None => post_logout,
    };
    auth.count(Outcome::Logout);
    Decision::Respond(EdgeResponse::redirect(location, set_cookies))
}

/// What a request's session cookie amounts to.
// Lives briefly on the stack; boxing the identity would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum SessionCheck {
    Valid {
        identity: Identity,
        set_cookies: Vec<String>,
    },
    /// There was a session and it is over: these cookies remove it.
    Ended {
        clear: Vec<String>,
    },
    Absent,
}

/// Rolls the session cookie at most this often (bounded by a tenth of the idle timeout).
fn roll_interval(idle: Duration) -> u64 {
    (idle.as_secs() / 10).clamp(1, 300)
}

pub(super) async fn session(
    auth: &ApplicationAuth,
    store: &dyn SessionStore,
    request: &AuthRequest<'_>,
) -> SessionCheck {
    let Some(settings) = &auth.session else {
        return SessionCheck::Absent;
    };
    let cookies = RequestCookies::new(request.headers.get_all(http::header::COOKIE).iter());
    let exchange = Exchange {
        host: request.host,
        tls: request.tls,
        cookies: &cookies,
    };
    let Some(mut session) = store.load(&exchange) else {
        let has_cookie = cookies
            .get(&cookies::cookie_name(&settings.cookie_name, request.tls))
            .is_some();
        // A cookie that does not open here (tampered, expired secret, another host's): remove it.
        return if has_cookie {
            SessionCheck::Ended {
                clear: store.clear(&exchange),
            }
        } else {
            SessionCheck::Absent
        };
    };
    let now = unix_now();
    let tenant_id = request.tenant().map(|t| &*t.id);
    if !session.is_live(now, settings.idle_timeout)
        || session.application != *auth.application_id
        || session.tenant.as_deref() != tenant_id
    {
        return SessionCheck::Ended {
            clear: store.clear(&exchange),
        };
    }
    let mut set_cookies = Vec::new();
    let mut tokens = None;
    let access_due = session.access_expires <= now + settings.refresh_leeway.as_secs();
    if session.refreshable && access_due {
        match refresh(auth, store, &exchange, &session, request).await {
            Some((refreshed, new_tokens)) => {
                set_cookies = store.save(&exchange, &refreshed, Some(&new_tokens), now);
                session = refreshed;
                tokens = Some(new_tokens);
                auth.count(Outcome::SessionRefreshed);
            }
            None => {
                auth.count(Outcome::RefreshFailed);
                return SessionCheck::Ended {
                    clear: store.clear(&exchange),
                };
            }
        }
    } else if auth.provider.forward_access_token && session.access_expires <= now {
        // The access token is dead and cannot be renewed.
        return SessionCheck::Ended {
            clear: store.clear(&exchange),
        };
    } else if now.saturating_sub(session.seen) >= roll_interval(settings.idle_timeout) {
        session.seen = now;
        set_cookies = store.save(&exchange, &session, None, now);
    } else {
        auth.count(Outcome::Session);
    }
    let header = |text: &str| HeaderValue::from_str(text).ok();
    let mut values = IdentityValues {
        user_id: header(&session.subject),
        user_email: session.email.as_deref().and_then(header),
        idp_name: auth.idp_name.clone(),
        client_id: auth.client_id.clone(),
        access_token: None,
        assertion: None,
    };
    if auth.provider.forward_access_token {
        let tokens = tokens.or_else(|| store.load_tokens(&exchange, &session));
        values.access_token = tokens.and_then(|tokens| header(&tokens.access_token));
    }
    if auth.provider.forward_assertion {
        values.assertion = session_assertion(auth, &session, tenant_id, now);
    }
    SessionCheck::Valid {
        identity: Identity {
            values,
            user_id: session.subject.clone().into(),
            tenant: None,
        },
        set_cookies,
    }
}

/// Assertions made for sessions on this worker thread, by session id: (auth generation, value,
/// expiry). Keyed by the full id, never a hash of it, so one user's assertion cannot reach another.
type AssertionCache = std::collections::HashMap<String, (u64, HeaderValue, u64), ahash::RandomState>;

thread_local! {
    static SESSION_ASSERTIONS: std::cell::RefCell<AssertionCache> = std::cell::RefCell::new(AssertionCache::default());
}

/// Entries per thread before the assertion cache is swept.
const ASSERTION_CACHE_ENTRIES: usize = 10_000;

fn session_assertion(
    auth: &ApplicationAuth,
    session: &Session,
    tenant_id: Option<&str>,
    now: u64,
) -> Option<HeaderValue> {
    let fresh_until = now + auth.assertion.lifetime.as_secs() / 4;
    let cached = SESSION_ASSERTIONS.with(|cache| {
        let cache = cache.borrow();
        let (owner, value, expires) = cache.get(session.sid.as_str())?;
        (*owner == auth.id && *expires > fresh_until).then(|| value.clone())
    });
    if cached.is_some() {
        return cached;
    }
    let client = auth.provider.client_id.as_deref();
    let (value, expires) = auth.sign_assertion(&session.subject, session.email.as_deref(), tenant_id, client)?;
    SESSION_ASSERTIONS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= ASSERTION_CACHE_ENTRIES {
            cache.retain(|_, (_, _, expires)| *expires > now);
            if cache.len() >= ASSERTION_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(session.sid.clone(), (auth.id, value.clone(), expires));
    });
    Some(value)
}

type RefreshResult = Option<(Session, SessionTokens)>;
/// When a refresh started, and its shared result.
type Flight = (Instant, Arc<tokio::sync::OnceCell<RefreshResult>>);

/// Refreshes in flight or just finished, per session generation, so parallel requests with the
/// same cookie use one refresh (and a rotated refresh token is never spent twice).
#[derive(Default)]
pub(super) struct RefreshFlights {
    flights: DashMap<(String, u64), Flight>,
}

impl RefreshFlights {
    fn cell(&self, sid: &str, generation: u64) -> Arc<tokio::sync::OnceCell<RefreshResult>> {
        if self.flights.len() > 1024 {
            self.flights.retain(|_, (started, _)| started.elapsed() < REFRESH_SHARE);
        }
        self.flights
            .entry((sid.to_owned(), generation))
            .or_insert_with(|| (Instant::now(), Arc::default()))
            .1
            .clone()
    }
}

async fn refresh(
    auth: &ApplicationAuth,
    store: &dyn SessionStore,
    exchange: &Exchange<'_, '_>,
    session: &Session,
    request: &AuthRequest<'_>,
) -> RefreshResult {
    let cell = auth.service.refreshes.cell(&session.sid, session.access_expires);
    cell.get_or_init(|| refresh_once(auth, store, exchange, session, request))
        .await
        .clone()
}

async fn refresh_once(
    auth: &ApplicationAuth,
    store: &dyn SessionStore,
    exchange: &Exchange<'_, '_>,
    session: &Session,
    request: &AuthRequest<'_>,
) -> RefreshResult {
    let tokens = store.load_tokens(exchange, session)?;
    let refresh_token = tokens.refresh_token.clone()?;
    let tenant = request.tenant()?;
    let client = client(auth)?;
    let token_url = endpoints(auth, &tenant.domain_name).await.ok()?.token?;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
    ];
    let mut answer = None;
    for attempt in 0..REFRESH_ATTEMPTS {
        match auth.service.client.post_form(&token_url, client, &form).await {
            Ok(response) if response.status >= 500 => {}
            Ok(response) => {
                answer = token_answer(&response);
                break;
            }
            Err(FetchError::Status(_)) | Err(FetchError::Body(_)) => break,
            Err(_) => {}
        }
        if attempt + 1 < REFRESH_ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let answer = answer?;
    // A new ID token must still be about the same user.
    if let Some(id_token) = answer.id_token.as_deref() {
        let keys = auth.keys_for(Some(&tenant.domain_name))?;
        let lookup = |id: &str| auth.tenant_domain_of_id(id);
        let claims = auth
            .verifier(&keys, &lookup)
            .verify(id_token, Audience::Client(client.0))
            .await
            .ok()?;
        if *claims.subject != *session.subject {
            return None;
        }
    }
    let now = unix_now();
    let mut refreshed = session.clone();
    refreshed.access_expires = now + answer.expires_in;
    refreshed.seen = now;
    refreshed.refreshable = answer.refresh_token.is_some() || tokens.refresh_token.is_some();
    let new_tokens = SessionTokens {
        sid: session.sid.clone(),
        access_token: answer.access_token,
        refresh_token: answer.refresh_token.or(tokens.refresh_token),
        id_token: answer.id_token.or(tokens.id_token),
    };
    Some((refreshed, new_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_accepts_only_same_host_relative_paths() {
        for good in ["/", "/dashboard", "/a/b?c=d#e", "/%2F%2Fevil.example"] {
            assert_eq!(safe_return_to(good), Some(good), "{good}");
        }
        for bad in [
            "",
            "dashboard",
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "/\r\nSet-Cookie: x=y",
            "/a\\b",
            "\\\\evil.example",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?}");
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(MAX_RETURN_TO))), None);
    }

    #[test]
    fn repeated_parameters_are_ambiguous() {
        let pairs = query_pairs(Some("state=a&state=b&code=c"));
        assert_eq!(param(&pairs, "state"), None);
        assert_eq!(param(&pairs, "code"), Some("c"));
    }

    #[test]
    fn queries_are_appended_correctly() {
        assert_eq!(
            with_query("https://idp/auth", &[("a", "1 2")]),
            "https://idp/auth?a=1+2"
        );
        assert_eq!(
            with_query("https://idp/auth?x=y", &[("a", "/")]),
            "https://idp/auth?x=y&a=%2F"
        );
    }

    #[test]
    fn pkce_challenge_is_s256() {
        // RFC 7636 Appendix B.
        assert_eq!(
            sha256_b64("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
