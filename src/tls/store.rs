//! Which certificate answers which name, swappable without a restart.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use dashmap::DashMap;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::LoadedCertificate;
use crate::metrics;
use crate::tenancy::host;

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// Certificates from the configuration, indexed by exact name and by wildcard parent.
#[derive(Default)]
struct Configured {
    exact: Map<Arc<LoadedCertificate>>,
    /// `*.auth.portal.io` is stored under `auth.portal.io`.
    wildcard: Map<Arc<LoadedCertificate>>,
    /// Name assumed for clients that send no usable SNI.
    default_name: Option<Box<str>>,
}

impl Configured {
    fn new(certificates: &[Arc<LoadedCertificate>], default_name: Option<&str>) -> Self {
        let mut configured = Configured {
            default_name: default_name.map(Into::into),
            ..Configured::default()
        };
        for certificate in certificates {
            for name in certificate.names.iter() {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut configured.wildcard, parent),
                    None => (&mut configured.exact, &**name),
                };
                // First listed wins, so the operator's order decides between overlapping files.
                map.entry(key.into()).or_insert_with(|| certificate.clone());
            }
        }
        configured
    }
}

/// All certificates the edge can present: configured files (swapped on reload) and managed
/// (ACME) certificates, which live across reloads.
#[derive(Default)]
pub struct CertificateStore {
    configured: ArcSwap<Configured>,
    managed: DashMap<Box<str>, Arc<LoadedCertificate>, ahash::RandomState>,
}

impl CertificateStore {
    pub fn new(certificates: &[Arc<LoadedCertificate>], default_name: Option<&str>) -> Self {
        let store = CertificateStore::default();
        store.replace_configured(certificates, default_name);
        store
    }

    /// Installs the certificates of a new configuration snapshot.
    pub fn replace_configured(&self, certificates: &[Arc<LoadedCertificate>], default_name: Option<&str>) {
        self.configured
            .store(Arc::new(Configured::new(certificates, default_name)));
        for certificate in certificates {
            metrics::global().record_certificate(certificate, "configured");
        }
    }

    /// The certificate for a normalized name: configured exact, then managed, then configured
    /// wildcard.
    pub fn lookup(&self, name: &str) -> Option<Arc<LoadedCertificate>> {
        let configured = self.configured.load();
        if let Some(found) = configured.exact.get(name) {
            return Some(found.clone());
        }
        if let Some(found) = self.managed.get(name) {
            return Some(found.clone());
        }
        let (_, parent) = name.split_once('.')?;
        configured.wildcard.get(parent).cloned()
    }

    /// The name assumed for a client without usable SNI, if configured.
    pub fn default_name(&self) -> Option<Box<str>> {
        self.configured.load().default_name.clone()
    }

    /// Whether a configured file (exact or wildcard) covers `name`; such names never need ACME.
    pub fn configured_covers(&self, name: &str) -> bool {
        let configured = self.configured.load();
        configured.exact.contains_key(name)
            || name
                .split_once('.')
                .is_some_and(|(_, parent)| configured.wildcard.contains_key(parent))
    }

    pub fn managed(&self, name: &str) -> Option<Arc<LoadedCertificate>> {
        self.managed.get(name).map(|found| found.clone())
    }

    pub fn insert_managed(&self, name: &str, certificate: Arc<LoadedCertificate>) {
        metrics::global().record_certificate(&certificate, "managed");
        self.managed.insert(name.into(), certificate);
    }

    pub fn managed_names(&self) -> Vec<Box<str>> {
        self.managed.iter().map(|entry| entry.key().clone()).collect()
    }
}

/// rustls's synchronous certificate choice, by SNI.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertificateStore>);

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CertificateStore")
            .field("configured_exact", &self.configured.load().exact.len())
            .field("managed", &self.managed.len())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(server_name) = hello.server_name() else {
            // No SNI (or an IP literal, which rustls drops): the configured default, if any.
            let default = self.0.default_name()?;
            return self.0.lookup(&default).map(|found| found.key.clone());
        };
        let mut buffer = [0u8; host::MAX_NAME_LENGTH + 2];
        let name = host::normalize(server_name.as_bytes(), &mut buffer).ok()?;
        self.0.lookup(name).map(|found| found.key.clone())
    }
}

/// What the HTTP layer knows about a request's TLS connection.
#[derive(Debug)]
pub struct ConnectionTls {
    /// Normalized SNI.
    pub server_name: Box<str>,
    /// The certificate presented; the Host of every request on the connection must be one of its
    /// names (else 421).
    pub certificate: Arc<LoadedCertificate>,
    pub version: &'static str,
}

/// Records each completed handshake and attaches [`ConnectionTls`] to the connection digest.
pub struct HandshakeObserver(pub Arc<CertificateStore>);

#[async_trait]
impl TlsAccept for HandshakeObserver {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let version = tls.version().unwrap_or("unknown");
        metrics::global().tls_handshakes.with_label_values(&[version]).inc();
        let mut buffer = [0u8; host::MAX_NAME_LENGTH + 2];
        let default;
        let name = match tls.server_name() {
            Some(server_name) => host::normalize(server_name.as_bytes(), &mut buffer).ok()?,
            None => {
                default = self.0.default_name()?;
                &default
            }
        };
        let certificate = self.0.lookup(name)?;
        // The extension holds an `Arc<ConnectionTls>` so each request can keep it by refcount.
        let connection = Arc::new(ConnectionTls {
            server_name: name.into(),
            certificate,
            version,
        });
        Some(Arc::new(connection))
    }
}
