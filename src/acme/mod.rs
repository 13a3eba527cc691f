//! On-demand certificates for tenants' own names, from an ACME CA.
//!
//! Contract:
//! - **Gate first.** A name may get a certificate only if the live host table resolves it to a
//!   tenant custom domain or a `{tenant}.{app custom domain}` name that no configured certificate
//!   covers, and (when the application sets `ask_url`) the ask endpoint answers 200. Ask answers,
//!   denials included, are cached for `ask_ttl`. Everything else is refused at once: no ACME
//!   traffic, no storage lookup.
//! - **Single flight.** The first handshake for an allowed name starts one issuance task and
//!   waits for it (at most `handshake_wait`); concurrent handshakes for the same name join it;
//!   other names are never blocked. The task finishes even if every waiter gave up.
//! - **Limits.** At most `max_concurrent_orders` orders at once, `orders_per_minute` per minute,
//!   and exponential per-name backoff after a failure — all visible in metrics.
//! - **Storage.** Issued certificates are written durably before they are served, loaded at
//!   start-up, and survive restarts and reloads; the ACME account is created once and stored.
//!   With Redis ([`redis`]), a group of instances shares certificates, account, issuance locks
//!   and challenge answers: one order per name for the whole group.
//! - **Renewal.** A background task renews a certificate once `renewal_fraction` of its lifetime
//!   is left (or inside the CA's ACME Renewal Information window when offered); a failed renewal
//!   keeps serving the still-valid certificate and retries with backoff.

pub mod issuer;
pub mod redis;
pub mod storage;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use dashmap::DashMap;
use rustls::sign::CertifiedKey;
use tokio::sync::{Semaphore, watch};

use crate::auth::http_client::IdpClient;
use crate::config::{AcmeSettings, Snapshot};
use crate::metrics;
use crate::ops::supervisor::ReloadObserver;
use crate::proxy::state::Http01Responder;
use crate::tls::{CertificateStore, LoadedCertificate, OnDemand, OnDemandError};
pub use issuer::{AcmeIssuer, Challenges, IssueError, Issuer};
pub use storage::{FileStorage, Storage, StoredCertificate};

/// How long one ask call may take before it counts as a denial.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Cached ask answers kept before the cache is cleared (bounds memory under random names).
const MAX_CACHED_DECISIONS: usize = 100_000;
/// An issuance lock outlives a crashed holder by this much (longer than any order may run).
const LOCK_TTL: Duration = crate::config::ISSUANCE_LOCK_TTL;
/// Longest wait for the CA's renewal information.
const ARI_TIMEOUT: Duration = Duration::from_secs(10);
/// ACME Renewal Information is asked at most this often per certificate.
const ARI_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);

type FlightResult = Option<Result<(), OnDemandError>>;

struct Backoff {
    failures: u32,
    until: Instant,
}

pub struct Manager {
    weak: Weak<Manager>,
    settings: AcmeSettings,
    snapshot: ArcSwap<Snapshot>,
    certificates: Arc<CertificateStore>,
    storage: Arc<dyn Storage>,
    issuer: Arc<dyn Issuer>,
    challenges: Arc<Challenges>,
    flights: DashMap<Box<str>, watch::Receiver<FlightResult>>,
    failures: DashMap<Box<str>, Backoff>,
    decisions: DashMap<Box<str>, (bool, Instant)>,
    renewal_hints: DashMap<Box<str>, (Instant, Option<SystemTime>)>,
    order_slots: Semaphore,
    recent_orders: Mutex<VecDeque<Instant>>,
    ask: IdpClient,
    renewing: AtomicBool,
}

/// Every certificate in Redis, read with a runtime of its own (start-up runs before the server's);
/// its connection ends with it.
fn load_shared(
    settings: &crate::config::RedisSettings,
) -> Result<Vec<(String, StoredCertificate)>, storage::StorageError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| storage::StorageError::Task(error.to_string()))?;
    runtime.block_on(redis::RedisStorage::new(settings.clone()).load_all())
}

/// Per name, the stored certificate that expires last (local copies and shared ones may differ
/// after another instance renewed).
fn newest_of(
    local: Vec<(String, StoredCertificate)>,
    shared: Vec<(String, StoredCertificate)>,
) -> Vec<(String, StoredCertificate)> {
    let mut newest: std::collections::HashMap<String, (i64, StoredCertificate)> = std::collections::HashMap::new();
    for (name, stored) in local.into_iter().chain(shared) {
        let expiry = stored.not_after();
        match newest.get(&name) {
            Some((kept, _)) if *kept >= expiry => {}
            _ => {
                newest.insert(name, (expiry, stored));
            }
        }
    }
    newest.into_iter().map(|(name, (_, stored))| (name, stored)).collect()
}

/// An ACME challenge token: base64url, at least 128 bits of entropy (RFC 8555 §8.1, §8.3).
fn is_acme_token(token: &str) -> bool {
    (22..=128).contains(&token.len())
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

fn refuse(reason: &'static str) -> OnDemandError {
    metrics::global().acme_refusals.with_label_values(&[reason]).inc();
    OnDemandError::NotAllowed
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

impl Manager {
    pub fn new(
        settings: AcmeSettings,
        snapshot: Arc<Snapshot>,
        certificates: Arc<CertificateStore>,
        storage: Arc<dyn Storage>,
        issuer: Arc<dyn Issuer>,
        challenges: Arc<Challenges>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|weak| Manager {
            weak: weak.clone(),
            order_slots: Semaphore::new(settings.max_concurrent_orders),
            settings,
            snapshot: ArcSwap::new(snapshot),
            certificates,
            storage,
            issuer,
            challenges,
            flights: DashMap::new(),
            failures: DashMap::new(),
            decisions: DashMap::new(),
            renewal_hints: DashMap::new(),
            recent_orders: Mutex::new(VecDeque::new()),
            ask: IdpClient::new(),
            renewing: AtomicBool::new(false),
        })
    }

    /// The usual wiring: filesystem storage under `settings.storage` (with Redis in front when
    /// `redis` is set), the ACME CA, and every stored certificate served from the start.
    /// Called before the server's runtimes exist.
    pub fn start(
        settings: AcmeSettings,
        snapshot: Arc<Snapshot>,
        certificates: Arc<CertificateStore>,
    ) -> Result<Arc<Self>, storage::StorageError> {
        let files = FileStorage::new(settings.storage.clone());
        let mut stored = files.load_all()?;
        let storage: Arc<dyn Storage> = match &settings.redis {
            None => Arc::new(files),
            Some(redis_settings) => {
                match load_shared(redis_settings) {
                    Ok(shared) => stored = newest_of(stored, shared),
                    // Start anyway: the local copies serve, Redis is retried on the next use.
                    Err(error) => tracing::warn!(%error, "shared certificates (Redis) not loaded at start"),
                }
                Arc::new(redis::TieredStorage {
                    local: files,
                    shared: redis::RedisStorage::new(redis_settings.clone()),
                })
            }
        };
        let challenges = Arc::new(Challenges::default());
        let issuer = Arc::new(AcmeIssuer::new(settings.clone(), storage.clone(), challenges.clone()));
        let manager = Self::new(settings, snapshot, certificates, storage, issuer, challenges);
        let loaded = manager.load_stored(stored);
        tracing::info!(certificates = loaded, "stored on-demand certificates loaded");
        Ok(manager)
    }

    /// Serves every stored certificate (start-up, before the listeners open).
    pub fn load_stored(&self, stored: Vec<(String, StoredCertificate)>) -> usize {
        let mut loaded = 0;
        for (name, certificate) in stored {
            match self.install(&name, &certificate) {
                Ok(_) => loaded += 1,
                Err(error) => {
                    tracing::warn!(server_name = name, %error, "stored certificate not usable; it will be re-issued on demand")
                }
            }
        }
        loaded
    }

    fn install(&self, name: &str, stored: &StoredCertificate) -> Result<Arc<LoadedCertificate>, String> {
        let loaded = LoadedCertificate::from_pem(stored.chain_pem.as_bytes(), stored.key_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        if !loaded.covers(name) {
            return Err("the certificate does not cover its name".into());
        }
        let loaded = Arc::new(loaded);
        self.certificates.insert_managed(name, loaded.clone());
        Ok(loaded)
    }

    /// The gate. Cheap for unknown names: one host-table lookup.
    async fn allowed(&self, name: &str) -> Result<(), OnDemandError> {
        let snapshot = self.snapshot.load_full();
        let route = self.eligibility(&snapshot, name).map_err(refuse)?;
        let Some(ask) = &snapshot.application(route.application).ask else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(entry) = self.decisions.get(name)
            && entry.1 > now
        {
            return if entry.0 { Ok(()) } else { Err(refuse("ask_denied")) };
        }
        let base = ask.url.render(None);
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}domain={name}");
        let allowed = matches!(
            tokio::time::timeout(ASK_TIMEOUT, self.ask.get_status(&url)).await,
            Ok(Ok(200))
        );
        if self.decisions.len() >= MAX_CACHED_DECISIONS {
            self.decisions.clear();
        }
        self.decisions.insert(name.into(), (allowed, now + ask.ttl));
        if allowed { Ok(()) } else { Err(refuse("ask_denied")) }
    }

    /// Could `name` have an on-demand certificate at all (before any ask)? The refusal reason
    /// otherwise, as counted in metrics.
    fn eligibility(&self, snapshot: &Snapshot, name: &str) -> Result<crate::tenancy::Route, &'static str> {
        let route = snapshot.hosts.resolve(name).ok_or("unknown_name")?;
        if !route.kind.is_on_demand_eligible() {
            return Err("not_a_tenant_name");
        }
        if self.certificates.configured_covers(name) {
            return Err("covered_by_configured_certificate");
        }
        Ok(route)
    }

    /// Checked before asking the shared storage for a challenge answer, so clients cannot turn
    /// challenge lookups into storage traffic for arbitrary names.
    fn eligible(&self, name: &str) -> bool {
        self.eligibility(&self.snapshot.load(), name).is_ok()
    }

    fn backing_off(&self, name: &str) -> bool {
        self.failures
            .get(name)
            .is_some_and(|backoff| backoff.until > Instant::now())
    }

    fn record_failure(&self, name: &str) {
        let mut entry = self.failures.entry(name.into()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        entry.failures += 1;
        let factor = 2u32.saturating_pow(entry.failures.saturating_sub(1).min(16));
        let delay = self
            .settings
            .failure_backoff_initial
            .saturating_mul(factor)
            .min(self.settings.failure_backoff_max);
        entry.until = Instant::now() + delay;
    }

    /// Joins the issuance of `name` or starts it; `replacing` is the certificate a renewal replaces.
    fn start_or_join(&self, name: &str, replacing: Option<Arc<LoadedCertificate>>) -> watch::Receiver<FlightResult> {
        match self.flights.entry(name.into()) {
            dashmap::Entry::Occupied(flight) => flight.get().clone(),
            dashmap::Entry::Vacant(slot) => {
                let (done, receiver) = watch::channel(None);
                slot.insert(receiver.clone());
                if let Some(manager) = self.weak.upgrade() {
                    let name: Box<str> = name.into();
                    tokio::spawn(async move {
                        let renewal = replacing.is_some();
                        let result = manager.issue_once(&name, replacing).await;
                        match &result {
                            Ok(()) => {
                                manager.failures.remove(&name);
                            }
                            Err(OnDemandError::Unavailable(reason)) => {
                                tracing::warn!(server_name = &*name, %reason, renewal, "certificate not obtained");
                                manager.record_failure(&name);
                            }
                            Err(OnDemandError::NotAllowed) => {}
                        }
                        if renewal {
                            let label = if result.is_ok() { "success" } else { "failure" };
                            metrics::global().acme_renewals.with_label_values(&[label]).inc();
                        }
                        manager.flights.remove(&name);
                        let _ = done.send(Some(result));
                    });
                }
                receiver
            }
        }
    }

    /// One issuance, start to finish: storage, lock, limits, order, durable write, install.
    async fn issue_once(&self, name: &str, replacing: Option<Arc<LoadedCertificate>>) -> Result<(), OnDemandError> {
        let newer_than = replacing.as_ref().map_or(unix_now(), |current| current.not_after);
        let usable = |stored: &StoredCertificate| {
            LoadedCertificate::from_pem(stored.chain_pem.as_bytes(), stored.key_pem.as_bytes())
                .is_ok_and(|loaded| loaded.not_after > newer_than && loaded.covers(name))
        };
        let adopt = |stored: &StoredCertificate| {
            self.install(name, stored)
                .map(|_| ())
                .map_err(OnDemandError::Unavailable)
        };
        // Another instance, or an earlier run, may have it already.
        if let Ok(Some(stored)) = self.storage.load_certificate(name).await
            && usable(&stored)
        {
            return adopt(&stored);
        }
        // The slot first, then the lock: the lock's lifetime covers only the order itself (at
        // most `order_timeout`, below LOCK_TTL), never a wait for a free slot.
        let slot = self
            .order_slots
            .acquire()
            .await
            .map_err(|_| OnDemandError::Unavailable("shutting down".into()))?;
        let lock = match self.storage.lock(name, LOCK_TTL).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                // Someone else is issuing it: wait for their result in storage.
                drop(slot);
                let deadline = Instant::now() + self.settings.handshake_wait;
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(Some(stored)) = self.storage.load_certificate(name).await
                        && usable(&stored)
                    {
                        return adopt(&stored);
                    }
                }
                return Err(OnDemandError::Unavailable(
                    "another instance holds the issuance lock".into(),
                ));
            }
            Err(error) => return Err(OnDemandError::Unavailable(format!("storage: {error}"))),
        };
        // Another instance may have finished between the first look and the lock.
        if let Ok(Some(stored)) = self.storage.load_certificate(name).await
            && usable(&stored)
        {
            return adopt(&stored);
        }
        {
            let mut recent = self
                .recent_orders
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let window = Instant::now() - Duration::from_secs(60);
            while recent.front().is_some_and(|at| *at < window) {
                recent.pop_front();
            }
            if recent.len() >= self.settings.orders_per_minute as usize {
                metrics::global()
                    .acme_refusals
                    .with_label_values(&["rate_limited"])
                    .inc();
                return Err(OnDemandError::Unavailable("orders-per-minute limit reached".into()));
            }
            recent.push_back(Instant::now());
        }
        let gauge = &metrics::global().acme_orders_in_flight;
        gauge.inc();
        let started = Instant::now();
        // A CA that accepts connections and never answers must not hold the name (and the
        // account) forever: past the deadline the order counts as failed and backs off.
        let issued = tokio::time::timeout(self.settings.order_timeout, self.issuer.issue(name)).await;
        gauge.dec();
        let issued = match issued {
            Ok(Ok(issued)) => issued,
            Ok(Err(error)) => {
                metrics::global().acme_orders.with_label_values(&["failure"]).inc();
                return Err(OnDemandError::Unavailable(error.to_string()));
            }
            Err(_) => {
                metrics::global().acme_orders.with_label_values(&["failure"]).inc();
                return Err(OnDemandError::Unavailable(format!(
                    "the CA did not finish the order within {} s",
                    self.settings.order_timeout.as_secs()
                )));
            }
        };
        metrics::global().acme_orders.with_label_values(&["success"]).inc();
        // Durable before served: a restart must never re-order what was already issued.
        if let Err(error) = self.storage.store_certificate(name, &issued.stored).await {
            tracing::error!(server_name = name, %error, "issued certificate could not be stored; serving it from memory");
        }
        drop(lock);
        let installed = self.install(name, &issued.stored).map_err(OnDemandError::Unavailable)?;
        tracing::info!(
            server_name = name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            not_after = installed.not_after,
            "certificate issued"
        );
        Ok(())
    }

    async fn renewal_due(&self, name: &str, certificate: &LoadedCertificate) -> bool {
        let now = SystemTime::now();
        let lifetime = (certificate.not_after - certificate.not_before).max(0) as f64;
        let renew_at = certificate.not_after - (lifetime * self.settings.renewal_fraction) as i64;
        let mut due = unix_now() >= renew_at;
        // ACME Renewal Information, where the CA offers it, can bring renewal forward.
        let needs_hint = self
            .renewal_hints
            .get(name)
            .is_none_or(|hint| hint.0.elapsed() > ARI_CHECK_INTERVAL);
        if !due && needs_hint {
            let chain = certificate
                .key
                .cert
                .first()
                .map(|der| der.as_ref().to_vec())
                .unwrap_or_default();
            let suggestion = tokio::time::timeout(ARI_TIMEOUT, self.issuer.suggested_renewal(&chain))
                .await
                .ok()
                .flatten();
            self.renewal_hints.insert(name.into(), (Instant::now(), suggestion));
        }
        if let Some(hint) = self.renewal_hints.get(name)
            && let Some(suggested) = hint.1
        {
            due |= now >= suggested;
        }
        due
    }

    async fn renew_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.settings.renew_check_interval).await;
            for name in self.certificates.managed_names() {
                let Some(current) = self.certificates.managed(&name) else {
                    continue;
                };
                if self.backing_off(&name) || !self.renewal_due(&name, &current).await {
                    continue;
                }
                // Names that left the configuration are not renewed; their certificate expires.
                if self
                    .snapshot
                    .load()
                    .hosts
                    .resolve(&name)
                    .is_none_or(|route| !route.kind.is_on_demand_eligible())
                {
                    continue;
                }
                tracing::info!(server_name = &*name, not_after = current.not_after, "renewing");
                drop(self.start_or_join(&name, Some(current)));
            }
        }
    }

    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }
}

#[async_trait]
impl OnDemand for Manager {
    async fn obtain(&self, name: &str) -> Result<(), OnDemandError> {
        self.allowed(name).await?;
        if self.backing_off(name) {
            metrics::global()
                .acme_refusals
                .with_label_values(&["backing_off"])
                .inc();
            return Err(OnDemandError::Unavailable("backing off after a failed order".into()));
        }
        let mut flight = self.start_or_join(name, None);
        let waited = tokio::time::timeout(self.settings.handshake_wait, flight.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(result)) => result
                .clone()
                .unwrap_or(Err(OnDemandError::Unavailable("no result".into()))),
            Ok(Err(_)) => Err(OnDemandError::Unavailable(
                "the issuance task ended without a result".into(),
            )),
            Err(_) => Err(OnDemandError::Unavailable(
                "the certificate did not arrive in time".into(),
            )),
        }
    }

    async fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(local) = self.challenges.tls_alpn(name) {
            return Some(local);
        }
        if !self.eligible(name) {
            return None;
        }
        // Another instance may have started this validation: its answer is in the shared storage.
        // Built for this handshake only: that instance, not this one, withdraws it.
        let digest = self
            .storage
            .load_challenge(&Challenges::tls_alpn_key(name))
            .await
            .ok()??;
        Challenges::tls_alpn_certificate(name, &digest).ok()
    }
}

#[async_trait]
impl Http01Responder for Manager {
    async fn key_authorization(&self, host: &str, token: &str) -> Option<String> {
        if let Some(local) = self.challenges.http(host, token) {
            return Some(local);
        }
        if !is_acme_token(token) || !self.eligible(host) {
            return None;
        }
        let shared = self.storage.load_challenge(&Challenges::http_key(token)).await.ok()??;
        let text = String::from_utf8(shared).ok()?;
        let (name, answer) = text.split_once('\n')?;
        (name == host).then(|| answer.to_owned())
    }
}

impl ReloadObserver for Manager {
    fn snapshot_applied(&self, snapshot: &Arc<Snapshot>) {
        self.snapshot.store(snapshot.clone());
        // Names added to the configuration must not stay refused by a cached denial.
        self.decisions.retain(|_, (allowed, _)| *allowed);
        if !self.renewing.swap(true, Ordering::AcqRel)
            && let Some(manager) = self.weak.upgrade()
        {
            tokio::spawn(manager.renew_loop());
        }
    }
}

#[cfg(test)]
mod tests;
