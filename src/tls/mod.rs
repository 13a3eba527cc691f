//! TLS termination: which certificate answers which name, and what happens before a handshake.
//!
//! Contract:
//! - Certificates are chosen by SNI: configured exact name, then managed (ACME) name, then
//!   configured wildcard (one label). No match: a fatal `unrecognized_name` alert, sent by the
//!   pre-TLS [`gate::Gate`] before rustls ever runs, with a metric and no other work.
//! - [`CertificateStore`] is read lock-free on every handshake; configured certificates are
//!   swapped whole on reload, managed certificates survive reloads.
//! - After a handshake, [`ConnectionTls`] (normalized SNI and the certificate presented) rides on
//!   the connection digest so the HTTP layer can refuse a Host the certificate does not cover
//!   (421).
//! - On-demand issuance plugs in through the [`OnDemand`] seam (see `crate::acme`).
//! - One crypto provider in the process: ring.

pub mod certificate;
pub mod client_hello;
pub mod dev;
pub mod gate;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use rustls::sign::CertifiedKey;

pub use certificate::LoadedCertificate;
pub use store::{CertificateStore, ConnectionTls, HandshakeObserver, Resolver};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Why an on-demand certificate is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnDemandError {
    /// The name is not one this edge may obtain certificates for.
    #[error("the name is not allowed")]
    NotAllowed,
    /// Allowed, but issuance failed, is backing off, or did not finish in time.
    #[error("{0}")]
    Unavailable(String),
}

/// On-demand certificates, as the pre-TLS gate sees them.
#[async_trait]
pub trait OnDemand: Send + Sync {
    /// Returns once a current certificate for `name` is in the store, or why it cannot be.
    /// Must refuse unknown names quickly and without any ACME or storage traffic.
    async fn obtain(&self, name: &str) -> Result<(), OnDemandError>;

    /// The TLS-ALPN-01 challenge certificate while a validation for `name` is pending (on any
    /// instance sharing the storage).
    async fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>>;
}

/// Installs ring as the process-wide rustls provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS settings of the https listener: SNI resolver over `store`, HTTP/2 and HTTP/1.1 by ALPN,
/// and the handshake observer.
pub fn listener_settings(store: Arc<CertificateStore>) -> TlsSettings {
    let observer = Box::new(HandshakeObserver(store.clone()));
    // `with_callbacks` cannot fail under rustls; it returns `Result` for other TLS backends.
    let mut settings = match TlsSettings::with_callbacks(observer) {
        Ok(settings) => settings,
        Err(error) => unreachable!("rustls TlsSettings::with_callbacks failed: {error}"),
    };
    settings.set_cert_resolver(Arc::new(Resolver(store)));
    settings.enable_h2();
    settings
}
