//! Browser sessions and where they are kept.
//!
//! A session is two sealed values: the small identity read on every request, and the token
//! bundle (access, refresh and ID tokens) opened only to refresh, to log out, or to forward the
//! access token. Both are bound to the host (see [`super::cookies`]) and to each other by `sid`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cookies::{self, RequestCookies, Sealer, set_cookie};
use crate::config::SessionSettings;

/// Format version of sealed session values.
const VERSION: u8 = 1;

/// What every request needs to know about its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub v: u8,
    pub sid: String,
    /// Application id and tenant id the session was created for.
    pub application: String,
    pub tenant: Option<String>,
    pub subject: String,
    pub email: Option<String>,
    /// Login time, last roll, absolute end and access-token expiry (Unix seconds).
    pub created: u64,
    pub seen: u64,
    pub expires: u64,
    pub access_expires: u64,
    pub refreshable: bool,
}

/// The tokens behind a session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTokens {
    pub sid: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SessionTokens")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Still usable at `now`: inside both the idle and the absolute window.
    pub fn is_live(&self, now: u64, idle: Duration) -> bool {
        self.v == VERSION && now < self.expires && now < self.seen.saturating_add(idle.as_secs())
    }

    pub fn new(
        sid: String,
        application: &str,
        tenant: Option<&str>,
        subject: String,
        email: Option<String>,
        now: u64,
        settings: &SessionSettings,
    ) -> Self {
        Session {
            v: VERSION,
            sid,
            application: application.to_owned(),
            tenant: tenant.map(str::to_owned),
            subject,
            email,
            created: now,
            seen: now,
            expires: now + settings.absolute_timeout.as_secs(),
            access_expires: 0,
            refreshable: false,
        }
    }
}

/// The request a store reads from and writes for.
pub struct Exchange<'a, 'c> {
    pub host: &'a str,
    pub tls: bool,
    pub cookies: &'a RequestCookies<'c>,
}

/// Where sessions live. Cookies by default; a shared store (Redis) fits the same seam.
pub trait SessionStore: Send + Sync {
    fn load(&self, exchange: &Exchange<'_, '_>) -> Option<Session>;
    fn load_tokens(&self, exchange: &Exchange<'_, '_>, session: &Session) -> Option<SessionTokens>;
    /// `Set-Cookie` values that store `session` (and `tokens`, when they changed).
    fn save(
        &self,
        exchange: &Exchange<'_, '_>,
        session: &Session,
        tokens: Option<&SessionTokens>,
        now: u64,
    ) -> Vec<String>;
    /// `Set-Cookie` values that remove the session.
    fn clear(&self, exchange: &Exchange<'_, '_>) -> Vec<String>;
}

/// Sessions sealed into host-only cookies.
pub struct CookieStore {
    sealer: std::sync::Arc<Sealer>,
    base: Box<str>,
    settings: SessionSettings,
}

impl CookieStore {
    pub fn new(sealer: std::sync::Arc<Sealer>, settings: &SessionSettings) -> Self {
        CookieStore {
            sealer,
            base: settings.cookie_name.clone(),
            settings: settings.clone(),
        }
    }

    fn identity_name(&self, tls: bool) -> String {
        cookies::cookie_name(&self.base, tls)
    }

    fn tokens_name(&self, tls: bool) -> String {
        cookies::cookie_name(&format!("{}-tokens", self.base), tls)
    }
}

impl SessionStore for CookieStore {
    fn load(&self, exchange: &Exchange<'_, '_>) -> Option<Session> {
        let name = self.identity_name(exchange.tls);
        let sealed = exchange.cookies.get(&name)?;
        let plaintext = self.sealer.open(exchange.host, &name, sealed)?;
        serde_json::from_slice(&plaintext).ok()
    }

    fn load_tokens(&self, exchange: &Exchange<'_, '_>, session: &Session) -> Option<SessionTokens> {
        let name = self.tokens_name(exchange.tls);
        let sealed = exchange.cookies.chunked(&name)?;
        let plaintext = self.sealer.open(exchange.host, &name, &sealed)?;
        let tokens: SessionTokens = serde_json::from_slice(&plaintext).ok()?;
        (tokens.sid == session.sid).then_some(tokens)
    }

    fn save(
        &self,
        exchange: &Exchange<'_, '_>,
        session: &Session,
        tokens: Option<&SessionTokens>,
        now: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        // Rolling expiry: the cookie lives for the idle timeout, never past the absolute end.
        let max_age = Duration::from_secs(
            self.settings
                .idle_timeout
                .as_secs()
                .min(session.expires.saturating_sub(now)),
        );
        let name = self.identity_name(exchange.tls);
        let Some(sealed) = serde_json::to_vec(session)
            .ok()
            .and_then(|json| self.sealer.seal(exchange.host, &name, &json))
        else {
            return out;
        };
        out.push(set_cookie(&name, &sealed, exchange.tls, Some(max_age)));
        if let Some(tokens) = tokens {
            let name = self.tokens_name(exchange.tls);
            let chunks = serde_json::to_vec(tokens)
                .ok()
                .and_then(|json| self.sealer.seal(exchange.host, &name, &json))
                .and_then(|sealed| cookies::chunk(&name, &sealed));
            match chunks {
                Some(chunks) => {
                    let written = chunks.len();
                    for (chunk_name, value) in chunks {
                        out.push(set_cookie(&chunk_name, &value, exchange.tls, Some(max_age)));
                    }
                    for stale in written..exchange.cookies.chunk_count(&name) {
                        out.push(set_cookie(&format!("{name}-{stale}"), "", exchange.tls, None));
                    }
                }
                None => tracing::warn!("session tokens too large for cookies; the session keeps no tokens"),
            }
        }
        out
    }

    fn clear(&self, exchange: &Exchange<'_, '_>) -> Vec<String> {
        let mut out = vec![set_cookie(&self.identity_name(exchange.tls), "", exchange.tls, None)];
        let name = self.tokens_name(exchange.tls);
        for index in 0..exchange.cookies.chunk_count(&name).max(1) {
            out.push(set_cookie(&format!("{name}-{index}"), "", exchange.tls, None));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::sync::Arc;

    fn settings() -> SessionSettings {
        SessionSettings {
            secrets: vec![Secret::new(b"0123456789abcdef0123456789abcdef".to_vec())],
            cookie_name: "vs".into(),
            idle_timeout: Duration::from_secs(600),
            absolute_timeout: Duration::from_secs(3600),
            login_state_timeout: Duration::from_secs(300),
            refresh_leeway: Duration::from_secs(30),
        }
    }

    fn header_from(set_cookies: &[String]) -> http::HeaderValue {
        let pairs: Vec<&str> = set_cookies.iter().map(|c| c.split(';').next().unwrap()).collect();
        http::HeaderValue::from_str(&pairs.join("; ")).unwrap()
    }

    #[test]
    fn saves_and_loads_a_session_bound_to_its_host() {
        let settings = settings();
        let store = CookieStore::new(Arc::new(Sealer::new(&settings.secrets)), &settings);
        let session = Session::new("sid-1".into(), "app", Some("tnt"), "user".into(), None, 1000, &settings);
        let tokens = SessionTokens {
            sid: "sid-1".into(),
            access_token: "a".repeat(5000),
            refresh_token: Some("r".into()),
            id_token: Some("i".into()),
        };
        let empty = http::HeaderValue::from_static("");
        let none = RequestCookies::new(std::iter::once(&empty));
        let exchange = Exchange {
            host: "acme.example",
            tls: true,
            cookies: &none,
        };
        let set = store.save(&exchange, &session, Some(&tokens), 1000);
        assert!(
            set.iter()
                .all(|c| c.starts_with("__Host-vs") && c.contains("Secure") && c.contains("HttpOnly"))
        );
        assert!(set.len() >= 3, "identity plus chunked tokens: {}", set.len());
        let header = header_from(&set);
        let cookies = RequestCookies::new(std::iter::once(&header));
        let back = Exchange {
            host: "acme.example",
            tls: true,
            cookies: &cookies,
        };
        assert_eq!(store.load(&back), Some(session.clone()));
        assert_eq!(store.load_tokens(&back, &session), Some(tokens));
        let elsewhere = Exchange {
            host: "globex.example",
            tls: true,
            cookies: &cookies,
        };
        assert_eq!(
            store.load(&elsewhere),
            None,
            "a copied cookie never opens on another host"
        );
        let cleared = store.clear(&back);
        assert!(cleared.iter().all(|c| c.ends_with("Max-Age=0")));
        assert!(cleared.len() >= 3);
    }

    #[test]
    fn liveness_follows_idle_and_absolute_timeouts() {
        let settings = settings();
        let session = Session::new("s".into(), "app", None, "u".into(), None, 1000, &settings);
        assert!(session.is_live(1000, settings.idle_timeout));
        assert!(!session.is_live(1000 + 600, settings.idle_timeout), "idle");
        let rolled = Session {
            seen: 4000,
            ..session.clone()
        };
        assert!(!rolled.is_live(4600, settings.idle_timeout), "absolute end");
    }
}
