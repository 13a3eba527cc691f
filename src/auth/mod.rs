//! Authentication and per-tenant authorization (bearer tokens, session cookies, OIDC login).
//!
//! Contract (filled in by the authentication work): every non-public request of an application
//! with an identity provider is authenticated, and its identity is checked against the tenant
//! resolved from the Host.

use std::sync::Arc;

use crate::config::{Application, Snapshot};

/// Why a request was not authenticated or not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication is required")]
    MissingCredentials,
    #[error("the token is not valid: {0}")]
    InvalidToken(&'static str),
    #[error("the token belongs to another tenant")]
    WrongTenant,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingCredentials | AuthError::InvalidToken(_) => 401,
            AuthError::WrongTenant => 403,
        }
    }

    /// RFC 6750 §3 challenge for 401 responses.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthError::MissingCredentials => Some("Bearer".into()),
            AuthError::InvalidToken(reason) => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{reason}\""
            )),
            AuthError::WrongTenant => Some("Bearer error=\"insufficient_scope\"".into()),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::WrongTenant => "wrong_tenant",
        }
    }
}

/// State that outlives configuration reloads.
#[derive(Default)]
pub struct AuthService;

impl AuthService {
    pub fn new() -> Self {
        AuthService
    }

    /// Per-snapshot authentication for an application, if it has an identity provider.
    pub fn application(&self, _snapshot: &Snapshot, _application: &Application) -> Option<Arc<ApplicationAuth>> {
        None
    }
}

/// An application's authentication, built per snapshot.
pub struct ApplicationAuth;
