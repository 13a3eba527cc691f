//! Graceful shutdown that actually waits for requests in flight.
//!
//! pingora's own graceful terminate stops the listeners, sleeps a fixed grace period and then
//! drops whatever is still running. On SIGTERM Vestibule instead:
//! 1. marks itself draining: `/readyz` answers 503 and responses close their connections;
//! 2. keeps accepting for `server.grace_period_seconds`, so load balancers see it leave;
//! 3. waits until no request is in flight, at most `server.graceful_shutdown_timeout_seconds`;
//! 4. hands over to pingora, which stops the listeners and exits.
//!
//! SIGQUIT (graceful upgrade to a process started with `-u`) and SIGINT (fast exit) keep
//! pingora's meaning.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::proxy::state::Shared;

/// How often the drain checks the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);

pub struct DrainOnTerminate {
    shared: Arc<Shared>,
    grace_period: Duration,
    drain_timeout: Duration,
}

impl DrainOnTerminate {
    pub fn new(shared: Arc<Shared>, grace_period: Duration, drain_timeout: Duration) -> Self {
        DrainOnTerminate {
            shared,
            grace_period,
            drain_timeout,
        }
    }

    async fn drain(&self) {
        self.shared.start_draining();
        tracing::info!(grace_period = ?self.grace_period, "SIGTERM: draining; readiness now reports 503");
        tokio::time::sleep(self.grace_period).await;
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        loop {
            let in_flight = self.shared.in_flight();
            if in_flight == 0 {
                tracing::info!("no request in flight; stopping");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(in_flight, "drain timeout reached; stopping with requests in flight");
                return;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerminate {
    async fn recv(&self) -> ShutdownSignal {
        // Installing the handlers cannot fail on Linux; if it did, a fast exit is the safe answer.
        let (Ok(mut terminate), Ok(mut quit), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = terminate.recv() => {
                self.drain().await;
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
