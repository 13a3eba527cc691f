//! Background work of a running edge: configuration reloads (file watch and SIGHUP), upstream
//! health checks, and readiness.
//!
//! A reload reads and validates the whole file, builds a new runtime and swaps it in one atomic
//! store; requests in flight keep the runtime they started with. A bad file changes nothing but
//! a failure counter and the log, where every problem is listed with its key path. Settings that
//! cannot change in place (listeners, process settings, the access log target) are reported as
//! needing a restart (or a graceful upgrade, `vestibule run -u`), and the rest is applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::{self, ListenerSettings, Snapshot, Source};
use crate::metrics;
use crate::proxy::state::{Runtime, Shared};
use crate::proxy::upstream;
use crate::tls::gate::Gate;

/// How often the configuration file's metadata is checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Something else that must follow a new snapshot (ACME, auth background work).
pub trait ReloadObserver: Send + Sync {
    fn snapshot_applied(&self, snapshot: &Arc<Snapshot>);
}

pub struct Supervisor {
    shared: Arc<Shared>,
    source: Source,
    gate: Arc<Gate>,
    /// The addresses actually bound (port 0 resolved), probed for readiness.
    bound: ListenerSettings,
    observers: Vec<Arc<dyn ReloadObserver>>,
}

impl Supervisor {
    pub fn new(
        shared: Arc<Shared>,
        source: Source,
        gate: Arc<Gate>,
        bound: ListenerSettings,
        observers: Vec<Arc<dyn ReloadObserver>>,
    ) -> Self {
        Supervisor {
            shared,
            source,
            gate,
            bound,
            observers,
        }
    }

    fn start_health_checks(runtime: &Runtime) {
        let interval = runtime.snapshot.upstream.health_check_interval;
        for application in runtime.applications.iter() {
            tokio::spawn(upstream::run_health_checks(
                Arc::downgrade(&application.upstream),
                interval,
            ));
        }
    }

    /// Loads the file again and applies it. Returns whether a new snapshot went live.
    pub async fn reload(&self, trigger: &'static str) -> bool {
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&source)).await;
        let snapshot = match loaded {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(error)) => {
                let problems = error.problems();
                tracing::error!(
                    trigger,
                    problems = problems.len(),
                    "configuration rejected; the previous one stays live"
                );
                for problem in problems {
                    tracing::error!(key = %problem.path, "{}", problem.message);
                }
                metrics::global().record_reload(None);
                return false;
            }
            Err(error) => {
                tracing::error!(%error, "configuration reload task failed");
                metrics::global().record_reload(None);
                return false;
            }
        };
        let current = self.shared.runtime();
        if snapshot.fingerprint == current.snapshot.fingerprint {
            return false;
        }
        self.report_restart_needed(&current.snapshot, &snapshot);
        self.apply(Arc::new(snapshot));
        tracing::info!(trigger, fingerprint = %self.shared.runtime().snapshot.fingerprint, "configuration reloaded");
        true
    }

    fn apply(&self, snapshot: Arc<Snapshot>) {
        let runtime = Runtime::build(snapshot.clone(), &self.shared.auth);
        self.shared
            .certificates
            .replace_configured(&snapshot.tls.certificates, snapshot.tls.default_server_name.as_deref());
        self.gate.set_client_hello_timeout(snapshot.tls.client_hello_timeout);
        Self::start_health_checks(&runtime);
        self.shared.swap(runtime);
        for observer in &self.observers {
            observer.snapshot_applied(&snapshot);
        }
        metrics::global().record_reload(Some(&snapshot.fingerprint));
    }

    fn report_restart_needed(&self, old: &Snapshot, new: &Snapshot) {
        let mut pending = Vec::new();
        if old.listeners != new.listeners {
            pending.push("listeners");
        }
        if old.server != new.server {
            pending.push("server");
        }
        if old.acme != new.acme || old.assertion != new.assertion {
            pending.push("acme/assertion");
        }
        if old.observability.access_log != new.observability.access_log
            || old.observability.log_level != new.observability.log_level
        {
            pending.push("observability.access_log/log_level");
        }
        if !pending.is_empty() {
            tracing::warn!(
                sections = ?pending,
                "these settings changed but only take effect after a restart or a graceful upgrade (vestibule run -u); everything else was applied"
            );
        }
    }

    async fn wait_until_listening(&self) {
        let addresses: Vec<std::net::SocketAddr> = [Some(self.bound.https), self.bound.http, self.bound.admin]
            .into_iter()
            .flatten()
            .collect();
        loop {
            let mut all = true;
            for address in &addresses {
                let probe = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(address)).await;
                all &= matches!(probe, Ok(Ok(_)));
            }
            if all {
                self.shared.set_ready();
                tracing::info!(https = %self.bound.https, http = ?self.bound.http, admin = ?self.bound.admin, "listening");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// File identity used to notice edits, including atomic replace-by-rename.
fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let initial = self.shared.runtime();
        Self::start_health_checks(&initial);
        for observer in &self.observers {
            observer.snapshot_applied(&initial.snapshot);
        }
        metrics::global().record_reload(Some(&initial.snapshot.fingerprint));
        drop(initial);
        self.wait_until_listening().await;

        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reloads only follow file changes");
                None
            }
        };
        let watched = match &self.source {
            Source::File(path) => Some(path.clone()),
            Source::Embedded => None,
        };
        let mut stamp = watched.as_ref().and_then(file_stamp);
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hangup.as_mut() { Some(signal) => signal.recv().await, None => std::future::pending().await } } => {
                    self.reload("sighup").await;
                    stamp = watched.as_ref().and_then(file_stamp);
                }
                _ = ticker.tick() => {
                    let Some(path) = &watched else { continue };
                    let current = file_stamp(path);
                    if current.is_some() && current != stamp {
                        stamp = current;
                        self.reload("file_change").await;
                    }
                }
            }
        }
    }
}
