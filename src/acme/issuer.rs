//! Getting a certificate from an ACME CA (RFC 8555) with instant-acme, and answering its
//! challenges (TLS-ALPN-01, RFC 8737; HTTP-01, RFC 8555 §8.3).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dashmap::DashMap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokio::sync::Mutex;

use super::storage::{Storage, StoredCertificate};
use crate::config::{AcmeSettings, ChallengeKind};

/// Polling while the CA validates and signs: quick first polls, since a handshake is waiting.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(20))
    .backoff(1.5)
    .timeout(Duration::from_secs(40));
/// How long a shared challenge answer lives in storage.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// ACME problem type of an account the CA does not know (RFC 8555 §6.7).
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

#[derive(Debug, Clone, thiserror::Error)]
pub enum IssueError {
    #[error("the ACME server cannot be reached or failed: {0}")]
    Server(String),
    #[error("validation with {challenge} failed: {detail}")]
    Validation { challenge: &'static str, detail: String },
    #[error("the CA offered none of the configured challenge types")]
    NoChallenge,
    #[error("storing the account failed: {0}")]
    Storage(String),
}

fn server(error: impl std::fmt::Display) -> IssueError {
    IssueError::Server(error.to_string())
}

/// A certificate ready for use and for storage.
pub struct Issued {
    pub stored: StoredCertificate,
}

/// Challenge answers currently published by this instance.
#[derive(Default)]
pub struct Challenges {
    /// TLS-ALPN-01: name → the self-signed certificate carrying the acmeIdentifier.
    tls_alpn: DashMap<Box<str>, Arc<CertifiedKey>>,
    /// HTTP-01: token → (name, key authorization).
    http: DashMap<Box<str>, (Box<str>, Box<str>)>,
}

impl Challenges {
    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn.get(name).map(|entry| entry.clone())
    }

    pub fn http(&self, host: &str, token: &str) -> Option<String> {
        let entry = self.http.get(token)?;
        (&*entry.0 == host).then(|| entry.1.to_string())
    }

    /// Storage key under which a TLS-ALPN-01 key authorization is shared.
    pub fn tls_alpn_key(name: &str) -> String {
        format!("tls-alpn-01/{name}")
    }

    /// Storage key under which an HTTP-01 answer is shared.
    pub fn http_key(token: &str) -> String {
        format!("http-01/{token}")
    }

    /// Builds and keeps the TLS-ALPN-01 certificate for `name` (this instance's own validation).
    pub fn publish_tls_alpn(&self, name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, IssueError> {
        let certified = Self::tls_alpn_certificate(name, digest)?;
        self.tls_alpn.insert(name.into(), certified.clone());
        Ok(certified)
    }

    /// The TLS-ALPN-01 certificate for `name` from the key authorization's SHA-256 digest
    /// (RFC 8737 §3).
    pub fn tls_alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, IssueError> {
        if digest.len() != 32 {
            return Err(IssueError::Server("a key authorization digest is 32 bytes".into()));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(server)?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(server)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let certificate = params.self_signed(&key).map_err(server)?;
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(server)?;
        Ok(Arc::new(CertifiedKey::new(vec![certificate.der().clone()], signing)))
    }

    fn withdraw(&self, name: &str, token: Option<&str>) {
        self.tls_alpn.remove(name);
        if let Some(token) = token {
            self.http.remove(token);
        }
    }
}

/// Who issues certificates: the ACME CA in production, anything with the same contract in tests.
#[async_trait]
pub trait Issuer: Send + Sync {
    async fn issue(&self, name: &str) -> Result<Issued, IssueError>;
    /// When the CA suggests renewing this certificate (ACME Renewal Information, RFC 9773), if it
    /// offers that.
    async fn suggested_renewal(&self, chain_der: &[u8]) -> Option<SystemTime>;
}

pub struct AcmeIssuer {
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    challenges: Arc<Challenges>,
    account: Mutex<Option<Account>>,
}

impl AcmeIssuer {
    pub fn new(settings: AcmeSettings, storage: Arc<dyn Storage>, challenges: Arc<Challenges>) -> Self {
        AcmeIssuer {
            settings,
            storage,
            challenges,
            account: Mutex::new(None),
        }
    }

    /// An account builder whose HTTP client trusts the web roots plus `ca_root`, and sets
    /// TCP_NODELAY: without it every ACME POST waits out a 40 ms delayed ACK.
    fn builder(&self) -> Result<instant_acme::AccountBuilder, IssueError> {
        let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.settings.ca_root {
            let pem = std::fs::read(path).map_err(|error| server(format!("{}: {error}", path.display())))?;
            for certificate in rustls_pemfile::certs(&mut &pem[..]) {
                roots.add(certificate.map_err(server)?).map_err(server)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(server)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Account::builder_with_http(Box::new(client)))
    }

    /// The account: restored from storage, or created once and stored before use.
    async fn account(&self, recreate: bool) -> Result<Account, IssueError> {
        let mut slot = self.account.lock().await;
        if !recreate && let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        if !recreate
            && let Some(stored) = self
                .storage
                .load_account()
                .await
                .map_err(|e| IssueError::Storage(e.to_string()))?
            && let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&stored)
        {
            let account = self.builder()?.from_credentials(credentials).await.map_err(server)?;
            *slot = Some(account.clone());
            return Ok(account);
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = self
            .builder()?
            .create(&new, self.settings.directory_url.clone(), None)
            .await
            .map_err(server)?;
        let serialized = serde_json::to_vec(&credentials).map_err(server)?;
        self.storage
            .store_account(&serialized)
            .await
            .map_err(|e| IssueError::Storage(e.to_string()))?;
        tracing::info!(account = account.id(), "ACME account created and stored");
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn attempt(&self, account: &Account, name: &str, kind: ChallengeKind) -> Result<Issued, IssueError> {
        let started = std::time::Instant::now();
        let step = |what: &str| {
            tracing::debug!(
                server_name = name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "ACME {what}"
            )
        };
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(map_api)?;
        step("order created");
        let mut token = None;
        let mut shared_keys = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authorization = result.map_err(server)?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(IssueError::Validation {
                        challenge: kind.as_str(),
                        detail: format!("authorization {other:?}"),
                    });
                }
            }
            let wanted = match kind {
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                ChallengeKind::Http01 => ChallengeType::Http01,
            };
            let mut challenge = authorization.challenge(wanted).ok_or(IssueError::NoChallenge)?;
            let key_authorization = challenge.key_authorization();
            // Published here and in the storage, so whichever instance the CA reaches can answer.
            let (shared_key, shared_value) = match kind {
                ChallengeKind::TlsAlpn01 => {
                    let digest = key_authorization.digest();
                    self.challenges.publish_tls_alpn(name, digest.as_ref())?;
                    (Challenges::tls_alpn_key(name), digest.as_ref().to_vec())
                }
                ChallengeKind::Http01 => {
                    self.challenges.http.insert(
                        challenge.token.clone().into(),
                        (name.into(), key_authorization.as_str().into()),
                    );
                    token = Some(challenge.token.clone());
                    let answer = format!("{name}\n{}", key_authorization.as_str());
                    (Challenges::http_key(&challenge.token), answer.into_bytes())
                }
            };
            if let Err(error) = self
                .storage
                .store_challenge(&shared_key, &shared_value, CHALLENGE_TTL)
                .await
            {
                tracing::warn!(%error, "challenge answer not shared; only this instance can answer it");
            }
            shared_keys.push(shared_key);
            challenge.set_ready().await.map_err(map_api)?;
        }
        step("challenges ready");
        let status = order.poll_ready(&POLL).await;
        step("order ready");
        self.challenges.withdraw(name, token.as_deref());
        for key in shared_keys {
            let _ = self.storage.delete_challenge(&key).await;
        }
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(other) => {
                return Err(IssueError::Validation {
                    challenge: kind.as_str(),
                    detail: format!("order {other:?}"),
                });
            }
            Err(instant_acme::Error::Api(problem)) => {
                return Err(IssueError::Validation {
                    challenge: kind.as_str(),
                    detail: problem.to_string(),
                });
            }
            Err(error) => return Err(server(error)),
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(server)?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(server)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(server)?;
        order.finalize_csr(csr.der()).await.map_err(map_api)?;
        step("finalized");
        let chain_pem = order.poll_certificate(&POLL).await.map_err(map_api)?;
        step("certificate downloaded");
        Ok(Issued {
            stored: StoredCertificate {
                chain_pem,
                key_pem: key.serialize_pem(),
            },
        })
    }
}

/// Separates "the CA no longer knows the account" from other failures.
fn map_api(error: instant_acme::Error) -> IssueError {
    match &error {
        instant_acme::Error::Api(problem) if problem.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST) => {
            IssueError::Server(ACCOUNT_DOES_NOT_EXIST.to_owned())
        }
        _ => server(error),
    }
}

#[async_trait]
impl Issuer for AcmeIssuer {
    async fn issue(&self, name: &str) -> Result<Issued, IssueError> {
        let mut account = self.account(false).await?;
        let mut last = IssueError::NoChallenge;
        let mut recreated = false;
        let mut kinds = self.settings.challenges.iter().copied().peekable();
        while let Some(kind) = kinds.peek().copied() {
            match self.attempt(&account, name, kind).await {
                Ok(issued) => return Ok(issued),
                // The CA lost the account (a reset test CA, a deactivated account): register again once.
                Err(IssueError::Server(detail)) if detail == ACCOUNT_DOES_NOT_EXIST && !recreated => {
                    tracing::warn!("the ACME server does not know the stored account; registering a new one");
                    account = self.account(true).await?;
                    recreated = true;
                }
                Err(error @ (IssueError::Validation { .. } | IssueError::NoChallenge)) => {
                    tracing::warn!(server_name = name, challenge = kind.as_str(), %error, "challenge failed; trying the next type");
                    last = error;
                    kinds.next();
                }
                Err(error) => return Err(error),
            }
        }
        Err(last)
    }

    async fn suggested_renewal(&self, chain_der: &[u8]) -> Option<SystemTime> {
        let account = self.account(false).await.ok()?;
        let certificate = rustls::pki_types::CertificateDer::from(chain_der);
        let identifier = instant_acme::CertificateIdentifier::try_from(&certificate).ok()?;
        let (info, _) = account.renewal_info(&identifier).await.ok()?;
        let start = info.suggested_window.start.unix_timestamp();
        let end = info.suggested_window.end.unix_timestamp();
        // RFC 9773 §4.2: pick a point inside the window.
        let chosen = start + (end - start).max(0) / 2;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(chosen.max(0) as u64))
    }
}
