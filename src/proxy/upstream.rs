//! An application's upstream targets: round-robin over healthy targets, lock-free.
//!
//! Health is active (a TCP connect per target every `health_check_interval`) and passive (a
//! failed connect marks the target down until the next successful check). When every target is
//! down the edge still tries them in turn rather than refusing outright, so a stale health view
//! never turns a recovering upstream into a hard outage; a dead one answers 502 at once.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pingora_core::upstreams::peer::{HttpPeer, Peer};

use crate::config::{UpstreamSettings, UpstreamTarget};

pub struct Target {
    pub config: UpstreamTarget,
    healthy: AtomicBool,
    /// Built once: the request path borrows it.
    peer: HttpPeer,
    /// Identifies connections to this peer (address, TLS, SNI, options) in the idle pool.
    pool_key: u64,
}

impl Target {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

pub struct Upstream {
    targets: Box<[Target]>,
    next: AtomicUsize,
    settings: UpstreamSettings,
}

impl Upstream {
    pub fn new(targets: &[UpstreamTarget], settings: &UpstreamSettings) -> Self {
        Upstream {
            targets: targets
                .iter()
                .map(|config| {
                    let peer = peer(config, settings);
                    Target {
                        config: config.clone(),
                        healthy: AtomicBool::new(true),
                        pool_key: peer.reuse_hash(),
                        peer,
                    }
                })
                .collect(),
            next: AtomicUsize::new(0),
            settings: settings.clone(),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Picks the next target: the next healthy one in rotation, or the next one at all when none
    /// is healthy. Returns its index.
    pub fn pick(&self) -> usize {
        let count = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| self.targets[index].is_healthy())
            .unwrap_or(start % count)
    }

    /// The pingora peer for target `index`, with the configured timeouts.
    pub fn peer(&self, index: usize) -> &HttpPeer {
        &self.targets[index].peer
    }

    /// The idle-pool key of target `index`.
    pub fn pool_key(&self, index: usize) -> u64 {
        self.targets[index].pool_key
    }

    /// How long an idle connection to these targets is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.settings.idle_timeout
    }

    /// Most idle connections kept per target and worker thread.
    pub fn max_idle_connections(&self) -> usize {
        self.settings.max_idle_connections
    }

    /// Passive health: a failed connect takes the target out of rotation until it answers a check.
    pub fn mark_down(&self, index: usize) {
        if let Some(target) = self.targets.get(index)
            && target.healthy.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(upstream = %target.config.address, "upstream marked down after a failed connect");
        }
    }

    async fn check_once(&self) {
        let timeout = self.settings.connect_timeout;
        for target in self.targets.iter() {
            let reachable = matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target.config.address)).await,
                Ok(Ok(_))
            );
            let was = target.healthy.swap(reachable, Ordering::Relaxed);
            if was != reachable {
                tracing::info!(upstream = %target.config.address, healthy = reachable, "upstream health changed");
            }
        }
    }
}

fn peer(target: &UpstreamTarget, settings: &UpstreamSettings) -> HttpPeer {
    let sni = if target.tls {
        target.host.to_string()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(target.address, target.tls, sni);
    let options = &mut peer.options;
    options.connection_timeout = Some(settings.connect_timeout);
    options.total_connection_timeout = Some(settings.connect_timeout * 2);
    options.read_timeout = Some(settings.read_timeout);
    options.write_timeout = Some(settings.write_timeout);
    options.idle_timeout = Some(settings.idle_timeout);
    peer
}

/// Checks every target periodically until the upstream is dropped (its snapshot was replaced).
pub async fn run_health_checks(upstream: Weak<Upstream>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(upstream) = upstream.upgrade() else { return };
        upstream.check_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS, DEFAULT_UPSTREAM_READ_TIMEOUT, DEFAULT_UPSTREAM_WRITE_TIMEOUT,
    };

    fn settings() -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_UPSTREAM_READ_TIMEOUT,
            write_timeout: DEFAULT_UPSTREAM_WRITE_TIMEOUT,
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_idle_connections: DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS,
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
        }
    }

    fn target(port: u16) -> UpstreamTarget {
        UpstreamTarget {
            tls: false,
            host: "127.0.0.1".into(),
            address: ([127, 0, 0, 1], port).into(),
        }
    }

    #[test]
    fn rotates_over_healthy_targets_and_falls_back_when_none_are() {
        let upstream = Upstream::new(&[target(1), target(2), target(3)], &settings());
        let picks: Vec<usize> = (0..6).map(|_| upstream.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        upstream.mark_down(1);
        let picks: Vec<usize> = (0..4).map(|_| upstream.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        upstream.mark_down(0);
        upstream.mark_down(2);
        let picks: Vec<usize> = (0..3).map(|_| upstream.pick()).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "all down: still rotates over everything");
    }

    #[tokio::test]
    async fn health_checks_follow_reachability() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap().port();
        let dead = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let upstream = Upstream::new(&[target(live), target(dead)], &settings());
        upstream.check_once().await;
        assert!(upstream.targets()[0].is_healthy());
        assert!(!upstream.targets()[1].is_healthy());
    }
}
