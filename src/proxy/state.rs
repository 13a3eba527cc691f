//! State shared by every request: the live [`Runtime`] (swapped whole on reload) and what lives
//! across reloads (certificates, request ids, the access log).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::headers::{RequestIds, ReservedHeaders, TenantValues};
use super::upstream::Upstream;
use crate::auth::{self, AuthService};
use crate::config::{HeaderNames, Snapshot};
use crate::metrics::ApplicationMetrics;
use crate::ops::access_log::AccessLog;
use crate::tls::CertificateStore;

/// Answers ACME HTTP-01 validations on the plain listener.
#[async_trait::async_trait]
pub trait Http01Responder: Send + Sync {
    /// The key authorization for `token` at `host`, while that validation is pending (on any
    /// instance sharing the storage).
    async fn key_authorization(&self, host: &str, token: &str) -> Option<String>;
}

/// Everything derived from one configuration snapshot. Requests hold an `Arc` to the runtime they
/// started with, so a reload never changes a request midway.
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub applications: Box<[ApplicationRuntime]>,
    pub reserved: ReservedHeaders,
    pub names: HeaderNames,
    /// The request id field's name as shared bytes: set on every response without a copy.
    pub request_id_name: bytes::Bytes,
}

pub struct ApplicationRuntime {
    pub id: HeaderValue,
    pub upstream: Arc<Upstream>,
    pub metrics: ApplicationMetrics,
    pub tenants: Box<[TenantValues]>,
    pub auth: Option<Arc<auth::ApplicationAuth>>,
}

/// Header values must be visible ASCII; config validation guarantees it for ids and DNS labels.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl Runtime {
    pub fn build(snapshot: Arc<Snapshot>, auth: &Arc<AuthService>) -> Self {
        let applications = snapshot
            .applications
            .iter()
            .map(|application| ApplicationRuntime {
                id: header_value(&application.id),
                upstream: Arc::new(Upstream::new(&application.upstreams, &snapshot.upstream)),
                metrics: ApplicationMetrics::new(&application.id),
                tenants: application
                    .tenants
                    .iter()
                    .map(|tenant| TenantValues {
                        id: header_value(&tenant.id),
                        domain_name: header_value(&tenant.domain_name),
                    })
                    .collect(),
                auth: auth.application(&snapshot, application),
            })
            .collect();
        Runtime {
            reserved: ReservedHeaders::new(&snapshot.headers),
            names: snapshot.headers.clone(),
            request_id_name: bytes::Bytes::copy_from_slice(snapshot.headers.request_id.as_str().as_bytes()),
            applications,
            snapshot,
        }
    }
}

pub struct Shared {
    runtime: ArcSwap<Runtime>,
    pub certificates: Arc<CertificateStore>,
    pub auth: Arc<AuthService>,
    pub request_ids: RequestIds,
    pub access_log: AccessLog,
    pub http01: Option<Arc<dyn Http01Responder>>,
    /// Port put in https redirects (443 is left out of the URL).
    https_port: AtomicU16,
    ready: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl Shared {
    pub fn new(
        runtime: Runtime,
        certificates: Arc<CertificateStore>,
        auth: Arc<AuthService>,
        access_log: AccessLog,
        http01: Option<Arc<dyn Http01Responder>>,
        https_port: u16,
    ) -> Self {
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            certificates,
            auth,
            request_ids: RequestIds::new(),
            access_log,
            http01,
            https_port: AtomicU16::new(https_port),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn swap(&self, runtime: Runtime) -> Arc<Runtime> {
        self.runtime.swap(Arc::new(runtime))
    }

    pub fn https_port(&self) -> u16 {
        self.https_port.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Ready: a configuration is live, every listener accepts, and no shutdown is under way.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A request started (paired with [`Shared::request_finished`]).
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
