//! The pre-TLS gate: runs on every TLS connection before pingora's handshake.
//!
//! It reads the ClientHello (bounded in size and time), then either
//! - lets the handshake proceed (a certificate exists for the SNI), rewinding the bytes it read;
//! - answers a TLS-ALPN-01 validation itself with the pending challenge certificate;
//! - waits for an on-demand certificate for an allowed name (single-flight, bounded); or
//! - sends a fatal `unrecognized_name` alert (unknown or missing SNI) and drops the connection,
//!   without touching ACME or storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_error::{Error, ErrorType, Result};
use rustls::server::{ClientHello as RustlsHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client_hello::{self, ACME_TLS_ALPN, MAX_CLIENT_HELLO, Parse};
use super::{CertificateStore, OnDemand, OnDemandError};
use crate::metrics;
use crate::tenancy::host;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// TLS alert descriptions (RFC 8446 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Alert {
    HandshakeFailure = 40,
    DecodeError = 50,
    InternalError = 80,
    UnrecognizedName = 112,
}

impl Alert {
    fn record(self) -> [u8; 7] {
        // Alert record: type 21, legacy version TLS 1.2, length 2, level fatal (2), description.
        [21, 3, 3, 0, 2, 2, self as u8]
    }
}

/// Why a connection was refused before its handshake (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoServerName,
    UnknownServerName,
    Malformed,
    Timeout,
    CertificateUnavailable,
    Closed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoServerName => "no_sni",
            Refusal::UnknownServerName => "unknown_sni",
            Refusal::Malformed => "malformed_client_hello",
            Refusal::Timeout => "client_hello_timeout",
            Refusal::CertificateUnavailable => "certificate_unavailable",
            Refusal::Closed => "closed_before_hello",
        }
    }
}

pub struct Gate {
    store: Arc<CertificateStore>,
    on_demand: Option<Arc<dyn OnDemand>>,
    client_hello_timeout_ms: AtomicU64,
}

impl Gate {
    pub fn new(
        store: Arc<CertificateStore>,
        on_demand: Option<Arc<dyn OnDemand>>,
        client_hello_timeout: Duration,
    ) -> Self {
        Gate {
            store,
            on_demand,
            client_hello_timeout_ms: AtomicU64::new(client_hello_timeout.as_millis() as u64),
        }
    }

    /// Applies a reloaded setting.
    pub fn set_client_hello_timeout(&self, timeout: Duration) {
        self.client_hello_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    async fn read_client_hello(
        &self,
        stream: &mut L4Stream,
        buffer: &mut Vec<u8>,
    ) -> std::result::Result<client_hello::ClientHello, Refusal> {
        let timeout = Duration::from_millis(self.client_hello_timeout_ms.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let needed = match client_hello::parse(buffer) {
                Parse::Complete(hello) => return Ok(hello),
                Parse::Invalid(_) => return Err(Refusal::Malformed),
                Parse::Incomplete(needed) => needed.min(MAX_CLIENT_HELLO),
            };
            let start = buffer.len();
            // Read what is announced, at least a typical hello's worth, never past the cap.
            let want = needed.max(start + 2048).min(MAX_CLIENT_HELLO);
            buffer.resize(want, 0);
            let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer[start..])).await;
            match read {
                Err(_) => {
                    buffer.truncate(start);
                    return Err(Refusal::Timeout);
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    buffer.truncate(start);
                    return Err(Refusal::Closed);
                }
                Ok(Ok(count)) => buffer.truncate(start + count),
            }
        }
    }

    async fn refuse(&self, stream: &mut L4Stream, refusal: Refusal, alert: Option<Alert>) -> Result<()> {
        metrics::global()
            .tls_handshake_failures
            .with_label_values(&[refusal.as_str()])
            .inc();
        if let Some(alert) = alert {
            // Best effort: the peer may already be gone.
            let _ = stream.write_all(&alert.record()).await;
            let _ = stream.flush().await;
        }
        Error::e_explain(
            ErrorType::HandshakeError,
            format!("connection refused before TLS: {}", refusal.as_str()),
        )
    }

    /// Completes a TLS-ALPN-01 validation handshake with the challenge certificate, then closes.
    async fn answer_challenge(&self, stream: &mut L4Stream, key: Arc<CertifiedKey>) -> Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| Error::explain(ErrorType::InternalError, format!("challenge TLS config: {error}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        let mut config = config;
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        match acceptor.accept(&mut *stream).await {
            Ok(mut tls) => {
                let _ = tls.shutdown().await;
                metrics::global()
                    .acme_challenges_answered
                    .with_label_values(&["tls-alpn-01"])
                    .inc();
            }
            Err(error) => tracing::debug!(%error, "TLS-ALPN-01 validation handshake failed"),
        }
        Error::e_explain(ErrorType::HandshakeError, "TLS-ALPN-01 validation answered")
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: RustlsHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[async_trait]
impl PreTlsProcess for Gate {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let mut buffer = Vec::new();
        let hello = match self.read_client_hello(stream, &mut buffer).await {
            Ok(hello) => hello,
            Err(Refusal::Malformed) => return self.refuse(stream, Refusal::Malformed, Some(Alert::DecodeError)).await,
            Err(refusal) => return self.refuse(stream, refusal, None).await,
        };
        let mut name_buffer = [0u8; host::MAX_NAME_LENGTH + 2];
        // An IP literal is not a server name (RFC 6066 §3): treated as no SNI, as rustls does.
        let raw_name = hello
            .server_name
            .as_deref()
            .filter(|raw| std::str::from_utf8(raw).map_or(true, |text| text.parse::<std::net::IpAddr>().is_err()));
        let default_name = self.store.default_name();
        let name = match raw_name.map(|raw| host::normalize(raw, &mut name_buffer)) {
            Some(Ok(name)) => name,
            None if !hello.acme_tls_only && default_name.is_some() => default_name.as_deref().unwrap_or_default(),
            None => {
                return self
                    .refuse(stream, Refusal::NoServerName, Some(Alert::UnrecognizedName))
                    .await;
            }
            Some(Err(_)) => {
                return self
                    .refuse(stream, Refusal::UnknownServerName, Some(Alert::UnrecognizedName))
                    .await;
            }
        };
        if hello.acme_tls_only {
            let challenge = match &self.on_demand {
                Some(on_demand) => on_demand.challenge_certificate(name).await,
                None => None,
            };
            return match challenge {
                Some(key) => {
                    // The challenge handshake reads the same ClientHello again.
                    stream.rewind(&buffer);
                    self.answer_challenge(stream, key).await
                }
                None => {
                    self.refuse(stream, Refusal::UnknownServerName, Some(Alert::UnrecognizedName))
                        .await
                }
            };
        }
        let existing = self.store.lookup(name);
        let fresh = existing
            .as_ref()
            .is_some_and(|certificate| certificate.not_after > unix_now());
        if !fresh {
            // Missing or expired: an allowed name gets a certificate now; otherwise a configured
            // (expired) file is still served, as any TLS server would.
            match (&self.on_demand, existing.is_some()) {
                (None, true) => {}
                (None, false) => {
                    return self
                        .refuse(stream, Refusal::UnknownServerName, Some(Alert::UnrecognizedName))
                        .await;
                }
                (Some(on_demand), have_one) => {
                    let started = Instant::now();
                    match on_demand.obtain(name).await {
                        Ok(()) => metrics::global()
                            .acme_handshake_wait
                            .observe(started.elapsed().as_secs_f64()),
                        Err(_) if have_one => {}
                        Err(OnDemandError::NotAllowed) => {
                            return self
                                .refuse(stream, Refusal::UnknownServerName, Some(Alert::UnrecognizedName))
                                .await;
                        }
                        Err(OnDemandError::Unavailable(reason)) => {
                            tracing::warn!(server_name = name, %reason, "no certificate could be obtained in time");
                            return self
                                .refuse(stream, Refusal::CertificateUnavailable, Some(Alert::InternalError))
                                .await;
                        }
                    }
                }
            }
        }
        stream.rewind(&buffer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_records_are_fatal() {
        assert_eq!(Alert::UnrecognizedName.record(), [21, 3, 3, 0, 2, 2, 112]);
        assert_eq!(Alert::HandshakeFailure.record()[6], 40);
    }
}
